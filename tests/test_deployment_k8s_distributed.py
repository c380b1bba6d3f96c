"""The manifests for distributed training and load tests, checked offline beyond the schemas (which
tests/test_deployment_k8s.py applies to every manifest under docker/k8s/): the multi-worker
training Job's TF_CONFIG, built by its own shell script for each completion index, names every
worker through the headless Service, and training/distribute.py reads it as the cluster meant;
the Locust master finds its workers and they it, both reach the deployed services, and the
load-test image holds what the locustfile imports.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tests.test_deployment_images as deployment_images
from tests.deployment_files import (
    K8S,
    ROOT,
    dockerfile_arguments,
    environment_of,
    flag_values,
    k8s_documents,
    k8s_object,
    pod_spec,
)
from training.distribute import cluster_size, is_chief_task, read_tf_config

JOB = "pixelgate-train-multiworker"


def test_multiworker_training_is_an_indexed_job_with_a_headless_service():
    job = k8s_object("Job", JOB)
    service = k8s_object("Service", JOB)
    pod = pod_spec(job)
    container = pod["containers"][0]
    environment = environment_of(container)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["suspend"] is True  # `kubectl apply -k` starts no run
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(environment["WORKERS"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert pod["subdomain"] == environment["SERVICE"] == service["metadata"]["name"]
    assert environment["JOB_NAME"] == job["metadata"]["name"]  # pods are named <job>-<index>
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert [port["port"] for port in service["spec"]["ports"]] == [int(environment["PORT"])]
    assert [port["containerPort"] for port in container["ports"]] == [int(environment["PORT"])]
    assert container["image"] == "pixelgate-training"
    # The models volume of the single-machine training Job: the chief exports where TF Serving reads.
    single = pod_spec(k8s_object("CronJob", "pixelgate-train"))
    assert volume_claims(pod)["models"] == volume_claims(single)["models"] == "pixelgate-models"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "training-multiworker.yaml" in kustomization["resources"]


def volume_claims(pod):
    return {volume["name"]: volume.get("persistentVolumeClaim", {}).get("claimName")
            for volume in pod["volumes"]}


def run_entry_script(tmp_path, index):
    """The container's shell script for completion index `index`, with a `python3` that records
    what it was started with instead of training."""
    container = pod_spec(k8s_object("Job", JOB))["containers"][0]
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps({'argv': sys.argv[1:], 'TF_CONFIG': os.environ['TF_CONFIG']}))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    environment = {**environment_of(container), "JOB_COMPLETION_INDEX": str(index),
                   "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    result = subprocess.run([*container["command"], *container["args"]], env=environment,
                            capture_output=True, text=True, check=True, timeout=30)
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("index", [0, 1])
def test_each_worker_builds_its_tf_config_from_its_index(tmp_path, index):
    container = pod_spec(k8s_object("Job", JOB))["containers"][0]
    environment = environment_of(container)
    started = run_entry_script(tmp_path, index)
    config = read_tf_config({"TF_CONFIG": started["TF_CONFIG"]})
    workers = int(environment["WORKERS"])
    assert config["cluster"]["worker"] == [
        f"{JOB}-{worker}.{environment['SERVICE']}:{environment['PORT']}" for worker in range(workers)]
    assert config["task"] == {"type": "worker", "index": index}
    assert cluster_size(config) == workers and is_chief_task(config) == (index == 0)
    assert started["argv"][:3] == ["-m", "training", "train"]
    assert started["argv"][started["argv"].index("--strategy") + 1] == "multiworker"


LOADTEST = K8S / "loadtest"


def test_locust_master_and_workers_find_each_other_and_the_stack():
    master_job = k8s_object("Job", "pixelgate-locust-master")
    workers_job = k8s_object("Job", "pixelgate-locust-worker")
    master = flag_values(pod_spec(master_job)["containers"][0]["args"])
    worker = flag_values(pod_spec(workers_job)["containers"][0]["args"])
    assert {"master", "headless"} <= master.keys() and "worker" in worker
    workers = workers_job["spec"]
    assert int(master["expect-workers"]) == workers["parallelism"] == workers["completions"]
    service = k8s_object("Service", "pixelgate-locust-master")
    assert worker["master-host"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= master_job["spec"]["template"]["metadata"]["labels"].items()
    port = service["spec"]["ports"][0]
    master_container = pod_spec(master_job)["containers"][0]
    container_ports = {item["name"]: item["containerPort"] for item in master_container["ports"]}
    assert int(worker["master-port"]) == port["port"] == container_ports[port["targetPort"]]
    gateway = k8s_object("Service", "pixelgate-gateway")
    assert master["host"] == f"http://{gateway['metadata']['name']}"
    assert gateway["spec"]["ports"][0]["port"] == 80
    tfserving = k8s_object("Service", "pixelgate-tfserving")
    grpc = next(item for item in tfserving["spec"]["ports"] if item["name"] == "grpc")
    assert master["grpc-target"] == f"{tfserving['metadata']['name']}:{grpc['port']}"
    # The workers read test-set images from the volume their init container fills.
    pod = pod_spec(workers_job)
    reads = next(mount for mount in pod["containers"][0]["volumeMounts"] if mount["name"] == "datasets")
    fills = next(mount for mount in pod["initContainers"][0]["volumeMounts"] if mount["name"] == "datasets")
    assert environment_of(pod["containers"][0])["DATA_DIR"] == reads["mountPath"]
    assert environment_of(pod["initContainers"][0])["DATA_DIR"] == fills["mountPath"]


def test_the_loadtest_kustomization_is_separate_and_complete():
    kustomization = yaml.safe_load((LOADTEST / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        path.name for path in LOADTEST.glob("*.yaml") if path.name != "kustomization.yaml")
    pods = [pod_spec(document) for resource in kustomization["resources"]
            for document in k8s_documents(LOADTEST / resource) if pod_spec(document)]
    images = {container["image"] for pod in pods
              for container in pod.get("initContainers", []) + pod["containers"]}
    assert {image["name"] for image in kustomization["images"]} == images
    assert images == {"pixelgate-loadtest", "pixelgate-training"}
    # A load test is a run, not part of the app `kubectl apply -k docker/k8s` deploys.
    assert "loadtest" not in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]


def test_the_loadtest_image_copies_what_the_locustfile_imports():
    deployment_images.test_dockerfiles_copy_files_that_exist_and_are_in_the_build_context("Dockerfile.loadtest")
    copied = {Path(source) for arguments in dockerfile_arguments("Dockerfile.loadtest", "COPY")
              for source in shlex.split(arguments)[:-1]}
    imported = {node.module for path in (ROOT / "tests" / "load").glob("*.py")
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("training")}
    for module in imported:
        assert Path(*module.split(".")).with_suffix(".py") in copied, module
