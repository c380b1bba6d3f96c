"""The Docker images, checked without a Docker engine: what the Dockerfiles copy exists and is in
their build context, and the gateway image's contents (requirements/serve.txt and serving/, no
TensorFlow) run: the real entry point, gunicorn and the gateway, on those distributions alone.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement

from serving.stack import free_port, stop, wait_for_http
from tests.conftest import encode
from tests.deployment_files import (
    DOCKER,
    ROOT,
    TF_SERVING_VERSION,
    compose_services,
    dockerfile_arguments,
    dockerignore_patterns,
    dockerignored,
    k8s_object,
    known_gateway_variables,
    pod_spec,
)


@pytest.mark.parametrize("name", ["Dockerfile.gateway", "Dockerfile.training", "Dockerfile.loadtest"])
def test_dockerfiles_copy_files_that_exist_and_are_in_the_build_context(name):
    patterns = dockerignore_patterns(name)
    copies = [shlex.split(arguments) for arguments in dockerfile_arguments(name, "COPY")]
    assert copies
    for arguments in copies:
        for source in [argument for argument in arguments if not argument.startswith("--")][:-1]:
            path = ROOT / source
            assert path.exists(), source
            files = [path] if path.is_file() else [
                file for file in path.rglob("*") if file.is_file() and "__pycache__" not in file.parts]
            excluded = [file for file in files if dockerignored(str(file.relative_to(ROOT)), patterns)]
            assert files and not excluded, f"{source}: {excluded} left out by {name}.dockerignore"
    for heavy in (".venv/bin/python", "models/mnist/1/saved_model.pb", ".git/HEAD"):
        assert dockerignored(heavy, patterns)


def test_gateway_image_runs_as_a_user_with_a_healthcheck_and_known_settings():
    name = "Dockerfile.gateway"
    assert dockerfile_arguments(name, "USER")[-1].split(":")[0] not in ("0", "root")
    assert "/healthz" in dockerfile_arguments(name, "HEALTHCHECK")[0]
    runs = dockerfile_arguments(name, "RUN")
    assert any("--requirement requirements/serve.txt" in run for run in runs)
    # The user cannot write __pycache__, so serving/'s bytecode is made while the image builds.
    assert any("compileall" in run and "serving/" in run for run in runs)
    settings = {item.split("=", 1)[0] for arguments in dockerfile_arguments(name, "ENV")
                for item in shlex.split(arguments)}
    python_settings = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
                       "PIP_DISABLE_PIP_VERSION_CHECK"}
    assert settings - python_settings <= known_gateway_variables()


def test_training_image_is_tensorflows_gpu_image_of_the_training_version():
    name = "Dockerfile.training"
    pins = (ROOT / "requirements" / "train.txt").read_text().splitlines()
    tensorflow_version = next(line.split("==")[1] for line in pins if line.startswith("tensorflow-cpu=="))
    assert f"TF_VERSION={tensorflow_version}" in dockerfile_arguments(name, "ARG")
    assert dockerfile_arguments(name, "FROM") == ["tensorflow/tensorflow:${TF_VERSION}-gpu"]
    # The sed drops tensorflow-cpu (the image has TensorFlow's GPU build) and keeps every other pin.
    dropped = re.search(r"sed '/(.+?)/d'", dockerfile_arguments(name, "RUN")[0]).group(1)
    assert [line for line in pins if re.search(dropped, line)] == [f"tensorflow-cpu=={tensorflow_version}"]
    serving_version = tuple(int(part) for part in TF_SERVING_VERSION.split(".")[:2])
    assert serving_version <= tuple(int(part) for part in tensorflow_version.split(".")[:2])


def test_training_image_has_every_pixelgate_module_training_imports():
    import ast

    copied = {shlex.split(arguments)[0].rstrip("/")
              for arguments in dockerfile_arguments("Dockerfile.training", "COPY")}
    for path in (ROOT / "training").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for module in modules:
                package = module.split(".")[0]
                if (ROOT / package).is_dir() and package != "training":
                    assert package in copied, f"{path.name} imports {module}, not in the training image"


def test_every_training_command_line_is_one_the_training_cli_takes():
    from training.__main__ import build_parser

    command_lines = {
        "Dockerfile CMD": json.loads(dockerfile_arguments("Dockerfile.training", "CMD")[0]),
        "compose": compose_services("gpu")["training"]["command"],
        "kubernetes": pod_spec(k8s_object("CronJob", "pixelgate-train"))["containers"][0]["args"],
    }
    for where, arguments in command_lines.items():
        parsed = build_parser().parse_args(arguments)
        assert parsed.command == "train" and parsed.model == "all", where


# ---- the gateway on requirements/serve.txt alone -----------------------------------------------

@pytest.fixture(scope="module")
def serve_requirements_only(tmp_path_factory) -> Path:
    """A folder holding what the gateway image installs, requirements/serve.txt and what pip
    installs with those pins, and nothing else: links to this environment's copies."""
    pins = [line.split("==")[0] for line in (ROOT / "requirements" / "serve.txt").read_text().splitlines()
            if "==" in line]
    folder = tmp_path_factory.mktemp("serve-requirements-only")
    for name in {dependency for pin in pins for dependency in with_dependencies(pin)}:
        distribution = importlib.metadata.distribution(name)
        for top in {file.parts[0] for file in distribution.files or [] if ".." not in file.parts}:
            if not (folder / top).exists():
                (folder / top).symlink_to(Path(str(distribution.locate_file(top))))
    return folder


def with_dependencies(distribution: str) -> set[str]:
    """A distribution and what pip installs with it, for this Python."""
    seen, pending = set(), [distribution]
    while pending:
        name = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if name not in seen:
            seen.add(name)
            for text in importlib.metadata.requires(name) or []:
                requirement = Requirement(text)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    pending.append(requirement.name)
    return seen


def isolated_python(site: Path, code: str) -> list[str]:
    """Python with nothing importable but the standard library, `site` and the repo."""
    path = f"import sys; sys.path[:0] = [{str(site)!r}, {str(ROOT)!r}]"
    return [sys.executable, "-I", "-S", "-c", f"{path}\n{code}"]


def test_gateway_imports_only_what_its_image_installs(serve_requirements_only):
    script = """
import importlib, pkgutil, runpy
import serving.gateway
for module in pkgutil.walk_packages(serving.gateway.__path__, "serving.gateway."):
    importlib.import_module(module.name)
runpy.run_path("serving/gunicorn.conf.py")
try:
    import tensorflow
except ImportError:
    print("no tensorflow")
"""
    result = subprocess.run(isolated_python(serve_requirements_only, script), cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no tensorflow"


def test_gateway_entrypoint_serves_on_its_image_requirements(serve_requirements_only, model_server,
                                                             models_dir, test_images, tmp_path):
    """docker/gateway-entrypoint.sh, given KServe's extra arguments, starts gunicorn and the
    gateway on serve.txt's distributions only: /readyz answers and an upload is classified."""
    (tmp_path / "bin").mkdir()
    gunicorn = tmp_path / "bin" / "gunicorn"
    run_gunicorn = "import runpy; sys.argv[0] = 'gunicorn'; runpy.run_module('gunicorn', run_name='__main__')"
    command = shlex.join(isolated_python(serve_requirements_only, run_gunicorn))
    gunicorn.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    gunicorn.chmod(0o755)
    port = free_port()
    environment = {"PATH": f"{gunicorn.parent}:/usr/bin:/bin", "MODEL_SERVER": model_server,
                   "MODEL_BASE_PATH": str(models_dir), "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                   "GATEWAY_WORKERS": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    process = subprocess.Popen(["sh", str(DOCKER / "gateway-entrypoint.sh"), "--model_name", "mnist",
                                "--predictor_host", "mnist-predictor.default"], cwd=ROOT, env=environment)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", process)
        answer = requests.post(f"http://127.0.0.1:{port}/v1/models/mnist:predict",
                               files={"image": encode(test_images["mnist"][0][0])}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "mnist" and len(answer.json()["predictions"]) == 1
        assert (tmp_path / "metrics").is_dir()
    finally:
        stop(process)
