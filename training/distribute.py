"""Training on several devices or machines with `tf.distribute` (`--strategy`).

- `one`: TensorFlow's default strategy, one device (what training always did);
- `mirrored`: `MirroredStrategy`, one replica per GPU of this machine;
- `multiworker`: `MultiWorkerMirroredStrategy`, one process per machine, the cluster named
  by `TF_CONFIG` (`{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
  "index": i}}`); gradients are all-reduced over gRPC (ring all-reduce: it also works on CPUs);
- `auto`: `multiworker` when `TF_CONFIG` names more than one worker, `mirrored` when this
  machine has more than one GPU, else `one`.

Every replica takes the profile's batch, so the global batch grows with the replicas and the
learning rate with it (`scale_for_replicas`). Only the chief (task `chief`, or worker 0 where
the cluster has none) writes checkpoints, logs and the exported version: the other workers
keep their checkpoints in a temporary directory they delete, as the tf.distribute guide has it.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

STRATEGIES = ("auto", "one", "mirrored", "multiworker")

logger = logging.getLogger(__name__)


class StrategyError(ValueError):
    """`--strategy` cannot be honoured here: no cluster in TF_CONFIG, or a malformed one."""


@dataclasses.dataclass(frozen=True)
class Distribution:
    strategy: object  # a tf.distribute.Strategy
    name: str  # "one", "mirrored" or "multiworker"
    replicas: int  # in the whole cluster
    workers: int
    task: str  # "chief", "worker 1", ...: for logs and the version's record
    is_chief: bool

    def describe(self):
        return {"strategy": self.name, "replicas": self.replicas, "workers": self.workers, "task": self.task}


def read_tf_config(environ=None):
    """TF_CONFIG as a dict, or None where it is unset or empty."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise StrategyError(f"TF_CONFIG is not JSON ({error})") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise StrategyError('TF_CONFIG needs "cluster" and "task" objects, e.g. {"cluster": {"worker": '
                            '["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}')
    members = cluster.get(task.get("type"))
    if not isinstance(members, list) or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(members):
        raise StrategyError(f"TF_CONFIG's task {task} is not in its cluster {cluster}")
    return config


def cluster_size(config):
    """The training processes TF_CONFIG names (the chief and the workers)."""
    if config is None:
        return 1
    return sum(len(config["cluster"].get(kind, [])) for kind in ("chief", "worker"))


def is_chief_task(config):
    """The chief writes; where the cluster names no chief, worker 0 is it (tf.distribute's rule)."""
    if config is None:
        return True
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def resolve(strategy, environ=None, gpus=None):
    """What `auto` means here; refuses `multiworker` without a cluster. No TensorFlow op runs."""
    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    config = read_tf_config(environ)
    if strategy == "multiworker" and cluster_size(config) < 2:
        raise StrategyError("--strategy multiworker needs TF_CONFIG naming a cluster of two or more workers "
                            "(see docs/training.md, \"Distributed training\")")
    if strategy != "auto":
        return strategy
    if cluster_size(config) > 1:
        return "multiworker"
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))  # reads the devices, starts no runtime
    return "mirrored" if gpus > 1 else "one"


@functools.cache
def get_distribution(strategy="auto"):
    """The process's strategy, made once: collective ops must be configured before TensorFlow runs
    anything else, and a process can join one cluster only."""
    import tensorflow as tf

    name = resolve(strategy)
    config = read_tf_config()
    if name == "multiworker":
        # NCCL (AUTO's choice) needs GPUs; ring all-reduce over gRPC runs on CPUs too.
        implementation = tf.distribute.experimental.CommunicationImplementation
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=implementation.AUTO if tf.config.list_physical_devices("GPU")
            else implementation.RING)
        made = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        patch_keras_for_multi_worker()
        task = config["task"]
        task_name = "chief" if task["type"] == "chief" else f"{task['type']} {task['index']}"
        distribution = Distribution(made, name, made.num_replicas_in_sync, cluster_size(config), task_name,
                                    is_chief_task(config))
    elif name == "mirrored":
        made = tf.distribute.MirroredStrategy()
        distribution = Distribution(made, name, made.num_replicas_in_sync, 1, "chief", True)
    else:
        distribution = Distribution(tf.distribute.get_strategy(), "one", 1, 1, "chief", True)
    logger.info("strategy %s: %d replica(s) on %d worker(s), this process is the %s", distribution.name,
                distribution.replicas, distribution.workers, distribution.task)
    return distribution


def scale_for_replicas(settings, replicas):
    """The profile for `replicas` replicas: each takes the profile's batch, so the global batch is
    `batch_size × replicas` and the steps per epoch shrink by as much. The peak learning rate follows
    the batch (profiles.py, "Replicas"): linearly for SGD (Goyal et al., 2017; the one-cycle
    warm-up is there already), by the square root for Adam and AdamW (Malladi et al., 2022)."""
    if replicas == 1:
        return settings
    factor = replicas if settings.optimizer == "sgd" else math.sqrt(replicas)
    return dataclasses.replace(settings, batch_size=settings.batch_size * replicas,
                               learning_rate=settings.learning_rate * factor)


def with_data_sharding(dataset):
    """Each worker reads every batch of an in-memory data set and keeps its share of the elements:
    there are no files to split (the AUTO policy would fall back to this, with a warning)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@contextlib.contextmanager
def worker_run_dir(distribution, run_dir, resume=False):
    """Where this process keeps checkpoints and logs: `run_dir` on the chief; on the other workers a
    temporary directory, deleted afterwards. Resuming, a worker starts from the chief's last
    checkpoint (a shared volume), so that every worker restarts at the same epoch."""
    if run_dir is None or distribution.is_chief:
        yield run_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"pixelgate-{distribution.task.replace(' ', '-')}-"))
    try:
        backup = Path(run_dir) / "backup"
        if resume and backup.is_dir():
            shutil.copytree(backup, scratch / "backup")
            from .train import HISTORY_FILE, SETUP_FILE

            for name in (HISTORY_FILE, SETUP_FILE):  # with the setup, each worker checks the resume too
                if (Path(run_dir) / name).exists():
                    shutil.copy(Path(run_dir) / name, scratch / name)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)



@functools.cache
def patch_keras_for_multi_worker():
    """Two fixes to Keras 3's TensorFlow trainer, without which `fit` fails under
    MultiWorkerMirroredStrategy (keras-team/keras#20585, open in 3.15); the test in
    tests/test_training_distributed.py trains through them:
    - before the first step `fit` averages a first batch over the replicas (`strategy.reduce`),
      only to build the metrics and optimizer from its shapes; this strategy refuses the
      (images, labels) pair: build from this worker's own share of the batch instead;
    - each step's logs (scalars) are averaged over the workers with `axis=0`, which a scalar
      does not have: average them with `axis=None`, so every worker sees the same loss and
      accuracy (and EarlyStopping decides alike everywhere)."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    def build_from_local_batch(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return keras_build(self, iterator=iterator, data_batch=data_batch)
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: strategy.experimental_local_results(value)[0], next(batches))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_scalars_too(values, strategy, reduction):
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and reduction in ("auto", "mean"):
            def mean(value):
                if strategy.experimental_local_results(value)[0].shape.rank == 0:
                    return strategy.reduce("MEAN", value, axis=None)
                return keras_reduce(value, strategy, reduction)

            return tf.nest.map_structure(mean, values)
        return keras_reduce(values, strategy, reduction)

    keras_build, keras_reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch
    trainer.reduce_per_replica = reduce_scalars_too
