"""Distributed training (training/distribute.py): two worker processes on loopback train one tiny
MNIST model together with `--strategy multiworker` (MultiWorkerMirroredStrategy, TF_CONFIG each);
the chief alone exports, the other worker leaves nothing behind, and the model is as good as the
one process of the session's `models_dir` trained on the same images. Plus how `--strategy`
is resolved and refused.
"""

import json
import os
import subprocess
import sys

import pytest

from serving import stack
from tests.conftest import DATA_DIR, ROOT
from training.__main__ import main
from training.distribute import StrategyError, read_tf_config, resolve, scale_for_replicas
from training.profiles import get_profile

# As the session's models_dir trains mnist (tests/conftest.py): the accuracy to compare with.
LIMIT, EPOCHS = 4000, 2


def tf_config(ports, index):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Both workers' (return code, output) and folders, after training mnist together."""
    if not (DATA_DIR / "mnist.npz").exists():
        pytest.skip(f"mnist.npz missing from {DATA_DIR}")
    root = tmp_path_factory.mktemp("multiworker")
    ports = [stack.free_port(), stack.free_port()]
    workers = []
    for index in range(2):
        folder = root / f"worker{index}"
        (folder / "tmp").mkdir(parents=True)  # its TMPDIR: where a non-chief keeps its checkpoints
        environment = {**os.environ, "TF_CONFIG": tf_config(ports, index), "DATA_DIR": str(DATA_DIR),
                       "TMPDIR": str(folder / "tmp"),
                       # Both on the CPU: two processes would fight over one GPU's memory.
                       "CUDA_VISIBLE_DEVICES": "-1"}
        command = [sys.executable, "-m", "training", "train", "--model", "mnist", "--profile", "tiny",
                   "--limit", str(LIMIT), "--epochs", str(EPOCHS), "--strategy", "multiworker",
                   "--models-dir", str(folder / "models"), "--logs-dir", str(folder / "logs")]
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        workers.append({"process": process, "folder": folder})
    try:
        for worker in workers:
            worker["output"] = worker["process"].communicate(timeout=600)[0]
    finally:
        for worker in workers:
            if worker["process"].poll() is None:  # a worker waiting forever for a dead peer
                worker["process"].kill()
                worker["process"].wait()
    for index, worker in enumerate(workers):
        assert worker["process"].returncode == 0, f"worker {index}:\n{worker['output'][-3000:]}"
    return workers


def test_only_the_chief_exports_and_the_other_worker_leaves_nothing(two_workers):
    chief, other = two_workers
    versions = sorted(path.name for path in (chief["folder"] / "models" / "mnist").iterdir())
    assert versions == ["1"], versions  # no half-written export left beside it either
    assert (chief["folder"] / "logs" / "mnist-cnn-tiny" / "history.jsonl").is_file()
    assert "the chief exports the version" in other["output"]
    assert "test accuracy" not in other["output"]
    # Neither models/ (not even an empty folder) nor the logs dir, nor the checkpoints it kept in a
    # temporary directory.
    assert not (other["folder"] / "models").exists()
    assert not (other["folder"] / "logs").exists()
    assert not any((other["folder"] / "tmp").iterdir())


def test_two_workers_reach_the_accuracy_of_one_process(two_workers, models_dir):
    record = json.loads((two_workers[0]["folder"] / "models" / "mnist" / "1" / "assets.extra"
                         / "evaluation.json").read_text())
    assert record["distribution"] == {"strategy": "multiworker", "replicas": 2, "workers": 2,
                                      "task": "worker 0"}
    tiny = get_profile("tiny", "mnist")
    assert record["batch_size"] == 2 * tiny.batch_size  # each replica takes the profile's batch
    assert record["training_images"] == LIMIT and record["epochs_run"] == EPOCHS
    alone = json.loads((models_dir / "mnist" / "1" / "assets.extra" / "evaluation.json").read_text())
    assert alone["training_images"] == LIMIT and alone["epochs"] == EPOCHS
    assert alone["distribution"]["replicas"] == 1
    # Half the steps of twice the batch: a little behind at most, never far.
    assert record["test_accuracy"] > 0.85
    assert abs(record["test_accuracy"] - alone["test_accuracy"]) < 0.05, (record["test_accuracy"],
                                                                          alone["test_accuracy"])


def test_auto_picks_the_strategy_the_machine_and_cluster_call_for():
    two = {"TF_CONFIG": tf_config([1, 2], 1)}
    assert resolve("auto", environ=two, gpus=0) == "multiworker"
    assert resolve("auto", environ={}, gpus=4) == "mirrored"
    assert resolve("auto", environ={}, gpus=1) == "one"
    # A one-worker cluster is one machine.
    alone = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                      "task": {"type": "worker", "index": 0}})}
    assert resolve("auto", environ=alone, gpus=0) == "one"
    assert resolve("one", environ=two, gpus=4) == "one"


@pytest.mark.parametrize("config, message", [
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}}', 'needs "cluster" and "task"'),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "is not in its cluster"),
])
def test_malformed_tf_config_is_refused_with_a_message(config, message):
    with pytest.raises(StrategyError, match=message):
        read_tf_config({"TF_CONFIG": config})


def test_cli_refuses_multiworker_without_a_cluster(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    arguments = ["train", "--model", "mnist", "--profile", "tiny", "--strategy", "multiworker",
                 "--models-dir", str(tmp_path / "models"), "--logs-dir", str(tmp_path / "logs")]
    assert main(arguments) == 2
    assert "--strategy multiworker needs TF_CONFIG" in caplog.text
    assert not (tmp_path / "models").exists()


def test_batch_and_learning_rate_scale_with_the_replicas():
    quick, sgd = get_profile("quick", "mnist"), get_profile("cpu", "cifar10")
    assert scale_for_replicas(quick, 1) is quick
    four = scale_for_replicas(quick, 4)
    assert four.batch_size == 4 * quick.batch_size
    assert four.learning_rate == pytest.approx(2 * quick.learning_rate)  # Adam: the square root
    assert scale_for_replicas(sgd, 4).learning_rate == pytest.approx(4 * sgd.learning_rate)  # SGD: linear


def test_a_resuming_worker_gets_the_chiefs_checkpoint_with_its_setup(tmp_path):
    """Each worker checks --resume against the setup the checkpoint was written under, as the chief does:
    without it, a worker would start while the chief refuses, and wait in the first all-reduce."""
    from training.distribute import Distribution, worker_run_dir
    from training.train import HISTORY_FILE, SETUP_FILE

    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "latest.weights.h5").write_bytes(b"weights")
    for name in (HISTORY_FILE, SETUP_FILE):
        (tmp_path / name).write_text("{}\n")
    worker = Distribution(strategy=None, name="multiworker", replicas=2, workers=2, task="worker 1",
                          is_chief=False)
    with worker_run_dir(worker, tmp_path, resume=True) as scratch:
        assert scratch != tmp_path
        assert sorted(path.name for path in scratch.iterdir()) == sorted(["backup", HISTORY_FILE, SETUP_FILE])
    assert not scratch.exists()
