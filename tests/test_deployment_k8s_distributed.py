"""The manifests for distributed training and load tests, checked offline beyond the schemas (which
tests/test_deployment_k8s.py applies to every manifest under docker/k8s/): the multi-worker
training Job's TF_CONFIG, built by its own shell script for each completion index, names every
worker through the headless Service, and training/distribute.py reads it as the cluster meant.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

from tests.deployment_files import K8S, environment_of, k8s_object, pod_spec
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
