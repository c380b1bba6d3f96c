"""The Kubernetes manifests (docker/k8s/), checked offline: Kubernetes' own schemas, strictly
(a misspelt field fails), and the names, ports, files and settings that tie them together.
"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from serving.gateway.channel import check_target
from serving.model_config import REGISTRY_NAME
from tests.deployment_files import (
    CONFIG,
    DOCKER,
    FILE_FLAGS,
    K8S,
    KSERVE_RUNTIME_FLAGS,
    TF_SERVING_VERSION,
    environment_of,
    flag_values,
    k8s_documents,
    k8s_manifests,
    k8s_object,
    known_gateway_variables,
    kserve_inference_service,
    pod_spec,
)

KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())  # 1.27: gRPC probes are GA
CONFIGMAP_FILES = [CONFIG / "batching_parameters_gpu.txt", CONFIG / "monitoring.config",
                   DOCKER / "tfserving-ready.sh"]


@pytest.mark.parametrize("path", k8s_manifests(), ids=lambda path: str(path.relative_to(K8S)))
def test_manifests_follow_the_kubernetes_schemas(path):
    for document in k8s_documents(path):
        if document["apiVersion"].startswith("serving.kserve.io/"):
            continue  # a custom resource: test_kserve_inference_service_fits_the_rest
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


def test_a_misspelt_field_fails_the_schema():
    deployment = k8s_object("Deployment", "pixelgate-gateway")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest_and_names_our_images():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        path.name for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
    images = {container["image"] for resource in kustomization["resources"]
              for document in k8s_documents(K8S / resource) if pod_spec(document)
              for container in pod_spec(document)["containers"]}
    ours = {"pixelgate-gateway", "pixelgate-training"}
    assert {image["name"] for image in kustomization["images"]} == ours
    assert images == ours | {f"tensorflow/serving:{TF_SERVING_VERSION}-gpu"}


def test_tf_serving_config_files_are_the_repo_files():
    configmap = k8s_object("ConfigMap", "pixelgate-tfserving")
    expected = {path.name: path.read_text() for path in CONFIGMAP_FILES}
    assert configmap["data"] == expected, "docker/k8s/tfserving-config.yaml is stale: run `make k8s-config`"


def _configmap_directory(pod: dict, container: dict) -> Path:
    volume = next(volume["name"] for volume in pod["volumes"]
                  if volume.get("configMap", {}).get("name") == "pixelgate-tfserving")
    return Path(next(mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] == volume))


def test_tf_serving_reads_its_files_from_the_configmap():
    keys = {path.name for path in CONFIGMAP_FILES}
    tfserving = pod_spec(k8s_object("Deployment", "pixelgate-tfserving"))
    predictor = kserve_inference_service()["spec"]["predictor"]
    for pod, container in [(tfserving, tfserving["containers"][0]), (predictor, predictor["model"])]:
        directory = _configmap_directory(pod, container)
        for flag, value in flag_values(container["args"]).items():
            if flag == "model_config_file":  # the registry training writes into the models volume
                models = next(mount for mount in container["volumeMounts"] if mount["name"] == "models")
                assert value == f"{models['mountPath']}/{REGISTRY_NAME}"
            elif flag in FILE_FLAGS:
                assert Path(value).parent == directory and Path(value).name in keys, flag
    container = pod_spec(k8s_object("Deployment", "pixelgate-tfserving"))["containers"][0]
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[0] == "bash" and Path(probe[1]).name in keys
    assert probe[2] == flag_values(container["args"])["model_config_file"]


def test_tf_serving_ports_probes_and_gpu():
    container = pod_spec(k8s_object("Deployment", "pixelgate-tfserving"))["containers"][0]
    flags = flag_values(container["args"])
    assert {port["name"]: str(port["containerPort"]) for port in container["ports"]} == {
        "grpc": flags["port"], "http": flags["rest_api_port"]}
    assert str(container["startupProbe"]["grpc"]["port"]) == flags["port"]
    assert str(container["livenessProbe"]["grpc"]["port"]) == flags["port"]
    assert flags["enable_grpc_healthcheck_service"] == "true"  # what the gRPC probes ask
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-gpu") and flags["batching_parameters_file"].endswith("_gpu.txt")
    service = k8s_object("Service", "pixelgate-tfserving")
    assert {port["targetPort"] for port in service["spec"]["ports"]} == {"grpc", "http"}


def test_gateway_reaches_tf_serving_and_scales():
    pod = pod_spec(k8s_object("Deployment", "pixelgate-gateway"))
    container = pod["containers"][0]
    environment = environment_of(container)
    assert set(environment) <= known_gateway_variables()
    # Every TF Serving pod by the headless Service's name, which gRPC resolves to all of them.
    service = k8s_object("Service", "pixelgate-tfserving-headless")
    grpc = next(port for port in service["spec"]["ports"] if port["name"] == "grpc")
    assert environment["MODEL_SERVER"] == f"dns:///{service['metadata']['name']}:{grpc['port']}"
    assert check_target(environment["MODEL_SERVER"])
    assert {port["name"]: str(port["containerPort"]) for port in container["ports"]} == {
        "http": environment["GATEWAY_PORT"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    models = next(mount for mount in container["volumeMounts"] if mount["name"] == "models")
    assert models["mountPath"] == environment["MODEL_BASE_PATH"] and models["readOnly"]
    # The gateway serves the models TF Serving reads from the registry, not every folder in the volume.
    tfserving = pod_spec(k8s_object("Deployment", "pixelgate-tfserving"))["containers"][0]
    assert f"--model_config_file={environment['MODEL_CONFIG_FILE']}" in tfserving["args"]
    claim = k8s_object("PersistentVolumeClaim", "pixelgate-models")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for deployment in ("pixelgate-gateway", "pixelgate-tfserving"):
        claims = {volume["persistentVolumeClaim"]["claimName"]
                  for volume in pod_spec(k8s_object("Deployment", deployment))["volumes"]
                  if "persistentVolumeClaim" in volume}
        assert claims == {claim["metadata"]["name"]}
    autoscaler = k8s_object("HorizontalPodAutoscaler", "pixelgate-gateway")
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "pixelgate-gateway"
    assert "cpu" in container["resources"]["requests"]  # the autoscaler's utilization is relative to it


def test_the_headless_service_names_every_tf_serving_pod():
    """clusterIP None: DNS answers each ready pod's address, not one virtual IP (one pod per connection)."""
    headless = k8s_object("Service", "pixelgate-tfserving-headless")["spec"]
    tfserving = k8s_object("Deployment", "pixelgate-tfserving")
    assert headless["clusterIP"] == "None" and not headless.get("publishNotReadyAddresses")
    assert headless["selector"] == tfserving["spec"]["selector"]["matchLabels"]
    container = pod_spec(tfserving)["containers"][0]
    [grpc] = headless["ports"]
    assert grpc["targetPort"] == "grpc" and str(grpc["port"]) == flag_values(container["args"])["port"]
    # gRPC looks the name up again when a connection closes: TF Serving closes each after a while, so
    # the gateway finds pods added since.
    assert "grpc.max_connection_age_ms=" in flag_values(container["args"])["grpc_channel_arguments"]


def test_training_writes_where_tf_serving_reads():
    pod = pod_spec(k8s_object("CronJob", "pixelgate-train"))
    assert k8s_object("CronJob", "pixelgate-train")["spec"]["suspend"] is True
    container = pod["containers"][0]
    assert container["args"][0] == "train" and container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    image = (DOCKER / "Dockerfile.training").read_text()
    for setting in ("MODEL_BASE_PATH", "LOGS_DIR", "DATA_DIR"):  # where the image writes
        path = re.search(rf"{setting}=(\S+)", image).group(1)
        assert path in mounts and not mounts[path].get("readOnly"), setting
    assert mounts["/models"]["name"] == "models"


def test_kserve_inference_service_fits_the_rest():
    service = kserve_inference_service()
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    name = service["metadata"]["name"]
    predictor = service["spec"]["predictor"]["model"]
    transformer = service["spec"]["transformer"]["containers"][0]
    # KServe refuses a -gpu runtime without a GPU, and a GPU without a -gpu runtime.
    assert predictor["runtimeVersion"] == f"{TF_SERVING_VERSION}-gpu"
    assert "nvidia.com/gpu" in predictor["resources"]["limits"]
    claim = k8s_object("PersistentVolumeClaim", "pixelgate-models")["metadata"]["name"]
    assert predictor["storageUri"] == f"pvc://{claim}/{name}"
    assert predictor["ports"][0]["name"] == "h2c"
    assert str(predictor["ports"][0]["containerPort"]) == flag_values(KSERVE_RUNTIME_FLAGS)["port"]
    environment = environment_of(transformer)
    assert set(environment) <= known_gateway_variables()
    assert environment["STORAGE_URI"] == f"pvc://{claim}" and environment["MODELS"] == name
    assert environment["MODEL_SERVER"] == f"{name}-predictor:80"
    assert environment["GATEWAY_PORT"] == str(transformer["ports"][0]["containerPort"]) == "8080"


def test_kserve_v2_inference_service_runs_the_embedded_model_server():
    from serving.model_server.flags import parse_command_line

    runtime = k8s_object("ServingRuntime", "pixelgate-model-server")
    service = k8s_object("InferenceService", "mnist-v2")
    predictor, model = service["spec"]["predictor"], service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]}
    container = runtime["spec"]["containers"][0]
    assert container["command"] == ["python3", "-m", "serving.model_server"]
    arguments = container["args"] + model["args"]
    options = parse_command_line(arguments).options  # only flags the embedded server takes
    flags = flag_values(arguments)
    assert options.model_name == "mnist" and flags["model_base_path"] == "/mnt/models"
    claim = k8s_object("PersistentVolumeClaim", "pixelgate-models")["metadata"]["name"]
    assert model["storageUri"] == f"pvc://{claim}/{options.model_name}"
    assert str(container["ports"][0]["containerPort"]) == flags["rest_api_port"]
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": int(flags["rest_api_port"])}
    directory = _configmap_directory(predictor, model)
    for flag in FILE_FLAGS:
        if flag in flags:
            path = Path(flags[flag])
            assert path.parent == directory and path.name in {file.name for file in CONFIGMAP_FILES}, flag
    # The server's code comes out of the gateway image, into the directory it runs from.
    (copier,) = predictor["initContainers"]
    code = next(mount for mount in model["volumeMounts"] if mount["mountPath"] == container["workingDir"])
    assert copier["image"] == "pixelgate-gateway" and container["image"] == "pixelgate-training"
    assert copier["command"][-2:] == ["/app/serving", container["workingDir"] + "/"]
    assert {mount["name"] for mount in copier["volumeMounts"]} == {code["name"]}
    gateway_image = (DOCKER / "Dockerfile.gateway").read_text()
    assert "WORKDIR /app\n" in gateway_image and "COPY serving/ serving/" in gateway_image  # /app/serving
    # The pod KServe builds, checked against Kubernetes' schemas like the other manifests.
    main = {key: value for key, value in model.items()
            if key not in ("modelFormat", "runtime", "protocolVersion", "storageUri", "args")}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mnist-v2-predictor"},
           "spec": {"initContainers": predictor["initContainers"], "volumes": predictor["volumes"],
                    "containers": [{**container, **main, "args": arguments}]}}
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
