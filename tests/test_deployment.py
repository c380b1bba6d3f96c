"""TF Serving's config files, its command lines and the compose files, checked offline as the
real tools read them: protobuf messages TF Serving parses, its real flags, the compose schema,
and every mounted path against the repo. Images: test_deployment_images.py; Kubernetes: _k8s.py.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import pytest
import requests
from google.protobuf import json_format, text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.config import pixelgate_config_pb2
from serving.config.monitoring_config_pb2 import MonitoringConfig
from serving.model_config import REGISTRY_NAME, register_model
from serving.model_server.flags import FLAGS, parse_command_line
from serving.protos.tensorflow_serving.apis import get_model_status_pb2
from serving.stack import free_port, stop, wait_for_models
from tests.conftest import send_json
from tests.deployment_files import (
    COMPOSE_VARIANTS,
    CONFIG,
    DOCKER,
    FILE_FLAGS,
    MODELS,
    ROOT,
    TF_SERVING_VERSION,
    bind_mounts,
    compose_services,
    flag_values,
    host_path,
    k8s_object,
    known_gateway_variables,
    load_compose,
    tf_serving_command_lines,
)

# tensorflow_model_server's flags: every tensorflow::Flag("...") of
# tensorflow_serving/model_servers/main.cc at TF Serving's tag 2.20.0.
TF_SERVING_FLAGS = frozenset((
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support", "enable_batching", "allow_version_labels_for_unavailable_models",
    "batching_parameters_file", "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "num_load_threads",
    "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "file_system_poll_wait_seconds", "flush_filesystem_caches", "tensorflow_session_parallelism",
    "tensorflow_session_config_file", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "use_alts_credentials", "ssl_config_file",
    "platform_config_file", "per_process_gpu_memory_fraction", "saved_model_tags",
    "grpc_channel_arguments", "grpc_max_threads", "enable_model_warmup",
    "num_request_iterations_for_warmup", "version", "monitoring_config_file",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model", "num_tflite_pools",
    "num_tflite_interpreters_per_pool", "enable_signature_method_name_check",
    "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled", "enable_profiler",
    "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "enable_grpc_healthcheck_service", "enable_serialization_as_tensor_content",
))
# TF 2.20's GraphDef version (tf.version.GRAPH_DEF_VERSION): it runs graphs whose min_consumer
# is at most this.
TF_SERVING_GRAPH_DEF_VERSION = 2288


# ---- TF Serving's config files ------------------------------------------------------------------

def container_registry(directory: Path, models_dir: Path | None = None) -> Path:
    """The models.config training writes into a models folder (`directory`, holding the three
    models: links to `models_dir`'s, or empty stand-ins), as the containers read it at /models."""
    for name in MODELS:
        if models_dir is not None:
            (directory / name).symlink_to(models_dir / name, target_is_directory=True)
        else:
            (directory / name / "1").mkdir(parents=True)
            (directory / name / "1" / "saved_model.pb").write_bytes(b"")
        register_model(directory, name)
    return directory / REGISTRY_NAME


@pytest.mark.parametrize("source, base", [("repo", "models/"), ("training", "/models/")])
def test_model_configs_parse_as_tf_serving_reads_them(source, base, tmp_path):
    """serving/config/models.config (make serve's models without a registry) and the registry
    training writes, which TF Serving reads in the containers."""
    path = CONFIG / "models.config" if source == "repo" else container_registry(tmp_path)
    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    models = config.model_config_list.config
    assert sorted(model.name for model in models) == sorted(MODELS)
    for model in models:
        assert model.base_path == base + model.name
        assert model.model_platform == "tensorflow"
        check_version_labels(model)


def check_version_labels(model) -> None:
    """Labels may only name versions the policy serves: TF Serving refuses the config otherwise."""
    if model.version_labels:
        served = set(model.model_version_policy.specific.versions)
        assert set(model.version_labels.values()) <= served, f"{model.name}: a label outside the policy"


def test_a_misspelt_field_fails_as_in_tf_serving():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('model_config_list { config { name: "x" basepath: "/m" } }',
                          model_server_config_pb2.ModelServerConfig())


@pytest.mark.parametrize("name", ["batching_parameters.txt", "batching_parameters_gpu.txt"])
def test_batching_parameters_parse_as_tf_serving_reads_them(name):
    parameters = text_format.Parse((CONFIG / name).read_text(), pixelgate_config_pb2.BatchingParameters())
    assert parameters.max_batch_size.value > 0
    if parameters.allowed_batch_sizes:  # TF Serving's rules for them
        sizes = list(parameters.allowed_batch_sizes)
        assert sizes == sorted(set(sizes)) and sizes[-1] == parameters.max_batch_size.value


def test_monitoring_config_parses_and_is_scraped_where_it_serves():
    config = text_format.Parse((CONFIG / "monitoring.config").read_text(), MonitoringConfig())
    assert config.prometheus_config.enable and config.prometheus_config.path.startswith("/")
    deployment = k8s_object("Deployment", "pixelgate-tfserving")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    rest_port = flag_values(tf_serving_command_lines()["kubernetes"])["rest_api_port"]
    assert annotations["prometheus.io/path"] == config.prometheus_config.path
    assert annotations["prometheus.io/port"] == rest_port
    with pytest.raises(text_format.ParseError):
        text_format.Parse("prometheus_config { enabled: true }", MonitoringConfig())


def test_tf_serving_runs_the_graphs_training_exports(models_dir):
    """TF Serving 2.20 runs graphs whose min_consumer its GraphDef version reaches (and TF 2.20's
    session loader gave the same outputs as 2.21 for these exports: docs/deployment.md)."""
    from tensorflow.core.protobuf import saved_model_pb2

    for name in MODELS:
        exported = (models_dir / name / "1" / "saved_model.pb").read_bytes()
        saved_model = saved_model_pb2.SavedModel.FromString(exported)
        for meta_graph in saved_model.meta_graphs:
            assert meta_graph.graph_def.versions.min_consumer <= TF_SERVING_GRAPH_DEF_VERSION


# ---- tensorflow_model_server's command lines ---------------------------------------------------

def test_the_embedded_server_knows_every_tf_serving_flag():
    assert {flag.name for flag in FLAGS} == TF_SERVING_FLAGS


@pytest.mark.parametrize("where", ["compose gpu", "compose cpu", "kubernetes", "kserve"])
def test_tf_serving_command_lines_use_real_flags(where):
    arguments = tf_serving_command_lines()[where]
    assert all(argument.startswith("--") and "=" in argument for argument in arguments), arguments
    assert set(flag_values(arguments)) <= TF_SERVING_FLAGS
    command_line = parse_command_line(arguments)  # and the embedded server takes the same line
    command_line.options.validate()
    assert command_line.options.enable_batching and command_line.options.enable_model_warmup


def test_every_config_file_server_keeps_labels_across_restarts():
    """TF Serving assigns version labels before it loads anything: without this flag, a restart
    with a labelled config (docs/deployment.md) fails. KServe's runtime has no config file."""
    for where, arguments in tf_serving_command_lines().items():
        if where != "kserve":
            assert flag_values(arguments)["allow_version_labels_for_unavailable_models"] == "true", where


def test_the_compose_command_line_drives_the_embedded_server(models_dir, tmp_path):
    """One command line and one set of config files drive either server: compose's own, with its
    /config and /models mounts pointed at the repo and at test models, starts the embedded server,
    which the readiness probe then finds ready, with Prometheus where monitoring.config says."""
    service = compose_services("gpu")["tfserving"]
    registry = container_registry(tmp_path, models_dir)
    model_config = tmp_path / "served.config"
    model_config.write_text(registry.read_text().replace('"/models/', f'"{tmp_path}/'))
    grpc_port, rest_port = free_port(), free_port()
    arguments = []
    for name, value in flag_values(service["command"]).items():
        if value.startswith("/config/"):
            value = str(host_path(value, bind_mounts(service)))
        value = {"port": str(grpc_port), "rest_api_port": str(rest_port),
                 "model_config_file": str(model_config)}.get(name, value)
        arguments.append(f"--{name}={value}")
    process = subprocess.Popen([sys.executable, "-m", "serving.model_server", *arguments], cwd=ROOT)
    try:
        wait_for_models(f"127.0.0.1:{grpc_port}", list(MODELS), process)
        probe = subprocess.run(["bash", str(DOCKER / "tfserving-ready.sh"), str(model_config)], timeout=60,
                               env={"PATH": "/usr/bin:/bin", "TF_SERVING_REST_PORT": str(rest_port)})
        assert probe.returncode == 0
        monitoring = text_format.Parse((CONFIG / "monitoring.config").read_text(), MonitoringConfig())
        metrics = requests.get(f"http://127.0.0.1:{rest_port}{monitoring.prometheus_config.path}", timeout=10)
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
    finally:
        stop(process)


# ---- compose -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", COMPOSE_VARIANTS)
def test_compose_files_follow_the_compose_specification(variant):
    schema_file = importlib.metadata.distribution("check-jsonschema").locate_file(
        "check_jsonschema/builtin_schemas/vendor/compose-spec.json")
    schema = json.loads(Path(str(schema_file)).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [error.message for error in validator.iter_errors(load_compose(variant))] == []


@pytest.mark.parametrize("variant", COMPOSE_VARIANTS)
def test_compose_tf_serving_reads_repo_files_and_fits_its_device(variant):
    service = compose_services(variant)["tfserving"]
    flags = flag_values(service["command"])
    for flag in FILE_FLAGS:
        if flag == "model_config_file":  # the registry in models/, which training writes
            assert host_path(flags[flag], bind_mounts(service)) == ROOT / "models" / REGISTRY_NAME
        else:
            assert host_path(flags[flag], bind_mounts(service)).is_file(), flag
    gpu = "deploy" in service
    assert gpu == (variant == "gpu")
    assert service["image"] == f"tensorflow/serving:{TF_SERVING_VERSION}" + ("-gpu" if gpu else "")
    assert flags["batching_parameters_file"].endswith("_gpu.txt") == gpu
    assert service["healthcheck"]["test"][-1] == flags["model_config_file"]
    probe = (DOCKER / "tfserving-ready.sh").read_text()
    assert flags["rest_api_port"] == re.search(r"TF_SERVING_REST_PORT:-(\d+)", probe).group(1)


@pytest.mark.parametrize("variant", COMPOSE_VARIANTS)
def test_compose_mounts_ports_and_settings_agree(variant):
    services = compose_services(variant)
    for name, service in services.items():
        for _, source in bind_mounts(service):
            # models/ and logs/ are git-ignored: the make targets create them.
            made_by_make = source in (ROOT / "models", ROOT / "logs")
            assert source.exists() or made_by_make, f"{name}: {source} is missing"
    tfserving, gateway = services["tfserving"], services["gateway"]
    grpc_port = flag_values(tfserving["command"])["port"]
    environment = gateway["environment"]
    assert environment["MODEL_SERVER"] == f"tfserving:{grpc_port}"
    assert gateway["depends_on"]["tfserving"]["condition"] == "service_healthy"
    assert set(environment) <= known_gateway_variables()
    assert any(port.split(":")[-1] == environment["GATEWAY_PORT"] for port in gateway["ports"])
    assert any(port.split(":")[-1] == grpc_port for port in tfserving["ports"])
    models_target = next(target for target, source in bind_mounts(gateway) if source == ROOT / "models")
    assert environment["MODEL_BASE_PATH"] == models_target
    assert ("deploy" in services["training"]) == (variant == "gpu")


def test_makefile_targets_run_the_compose_files():
    def dry_run(*arguments: str) -> str:
        result = subprocess.run(["make", "-n", *arguments], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert re.search(r"docker compose -f docker/compose\.yaml\s+up --detach --build --wait", dry_run("up"))
    cpu = r"docker compose -f docker/compose\.yaml -f docker/compose\.cpu\.yaml\s+up"
    assert re.search(cpu, dry_run("up", "DEVICE=cpu"))
    assert "--profile train down" in dry_run("down") and "--profile train build" in dry_run("docker-build")
    assert "run --rm --build training" in dry_run("docker-train", "MODEL=mnist", "PROFILE=full")


# ---- the readiness probe -----------------------------------------------------------------------

def status_server(states: dict[str, str]) -> http.server.HTTPServer:
    """Stands in for TF Serving's REST GET /v1/models/<name>: a GetModelStatusResponse in JSON
    as TF Serving prints it, or TF Serving's 404 for an unknown model."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.removeprefix("/v1/models/")
            if name in states:
                response = get_model_status_pb2.GetModelStatusResponse()
                version = response.model_version_status.add(version=1)
                version.state = get_model_status_pb2.ModelVersionStatus.State.Value(states[name])
                body, status = json_format.MessageToJson(response, indent=1).encode(), 200
            else:
                error = {"error": f"Servable not found for request: Latest({name})"}
                body, status = json.dumps(error).encode(), 404
            send_json(self, status, body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("states, ready", [
    ({name: "AVAILABLE" for name in MODELS}, True),
    ({"mnist": "AVAILABLE", "fashion_mnist": "LOADING", "cifar10": "AVAILABLE"}, False),
    ({"mnist": "AVAILABLE", "fashion_mnist": "AVAILABLE"}, False),  # cifar10 unknown: 404
    (None, False),  # nothing listens
])
def test_readiness_probe_waits_for_every_model(states, ready, tmp_path):
    registry = container_registry(tmp_path)
    server = status_server(states) if states is not None else None
    port = server.server_address[1] if server else free_port()
    try:
        result = subprocess.run(
            ["bash", str(DOCKER / "tfserving-ready.sh"), str(registry)],
            env={"PATH": "/usr/bin:/bin", "TF_SERVING_REST_PORT": str(port)}, capture_output=True, timeout=60,
        )
    finally:
        if server:
            server.shutdown()
            server.server_close()
    assert (result.returncode == 0) == ready, result.stderr.decode()


def test_readiness_probe_once_ready_waits_only_for_the_models_it_had(tmp_path):
    """A model registered while TF Serving serves does not make it unready while it loads (or never
    loads); once AVAILABLE, it counts like the others."""
    registry = container_registry(tmp_path)  # mnist, fashion_mnist, cifar10
    states = {name: "AVAILABLE" for name in MODELS}
    server = status_server(states)
    environment = {"PATH": "/usr/bin:/bin", "TF_SERVING_REST_PORT": str(server.server_address[1]),
                   "TF_SERVING_READY_STATE": str(tmp_path / "ready-models")}

    def ready() -> bool:
        result = subprocess.run(["bash", str(DOCKER / "tfserving-ready.sh"), str(registry)], env=environment,
                                capture_output=True, timeout=60)
        return result.returncode == 0

    try:
        states["cifar10"] = "LOADING"
        assert not ready()  # never ready yet: every model counts
        states["cifar10"] = "AVAILABLE"
        assert ready()
        (tmp_path / "flowers" / "1").mkdir(parents=True)
        (tmp_path / "flowers" / "1" / "saved_model.pb").write_bytes(b"")
        register_model(tmp_path, "flowers")
        assert ready()  # flowers is not known to TF Serving yet: 404
        states["flowers"] = "LOADING"
        assert ready()
        states["flowers"] = "AVAILABLE"
        assert ready()
        states["flowers"] = "LOADING"  # once it was AVAILABLE, its loss counts
        assert not ready()
    finally:
        server.shutdown()
        server.server_close()


# ---- docs/deployment.md --------------------------------------------------------------------------

def test_readme_deployment_configs_parse():
    """The config entries docs/deployment.md says to paste are ones TF Serving accepts."""
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```proto\n(.*?)```", deployment, re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        entries = text_format.Parse(block, model_server_config_pb2.ModelConfigList())
        for model in entries.config:
            assert model.name in MODELS and model.base_path == f"/models/{model.name}"
            check_version_labels(model)
