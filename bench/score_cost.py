"""What the out-of-distribution score costs a prediction: the exported `serving_default` run with and
without its `ood_score` output, CPU time per call at batch sizes from 1 to 32 (the model server batches
what is queued; bench/report.py reads the cost at the batch it ran).

    python -m bench.score_cost --models-dir DIR --data-dir DIR --model mnist --seconds 3

prints one JSON line per batch size. TF Serving runs a signature's whole function whichever outputs a
request asks for, so a version exported without the score is the only true "without". To compare the
two from one export, the signature is frozen (its variables made constants, its functions inlined)
and run in a TF1 session — as TF Serving runs a graph: grappler-optimized, one intra-op thread as
`make serve` gives the model server — fetching `probabilities` alone (the session prunes every op the
score needs and the probabilities do not) or both. The other outputs' ops are few and small; their
share of a call is what this measures.

Its own process, whose thread pools are pinned before TensorFlow starts: a session's thread counts
only size the process's pools if it is the first to start them, and loading a SavedModel starts them
at one thread per core. Then Eigen splits a small matrix product across both cores of this machine,
and the hand-over costs more than the product: the score's 1 × 128 by 128 × 138 product took 90 µs
instead of 6 (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SCORE_KEY = "ood_score"
OUTPUT_KEY = "probabilities"
BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def cpu_microseconds(run, images: np.ndarray, seconds: float) -> float:
    for _ in range(10):
        run(images)
    calls, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        run(images)
        calls += 1
    return (time.process_time() - start) / calls * 1e6


class FrozenSignature:
    """A version's serving_default, frozen into a TF1 session that runs only what the fetched outputs need."""

    def __init__(self, version_dir: Path) -> None:
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        loaded = tf.saved_model.load(str(version_dir))  # referenced while freezing: it holds the variables
        signature = loaded.signatures["serving_default"]
        self.output_keys = sorted(signature.structured_outputs)
        frozen = convert_variables_to_constants_v2(signature)
        # A frozen function's outputs are its signature's, flattened in sorted key order.
        self._names = dict(zip(self.output_keys, (tensor.name for tensor in frozen.outputs), strict=True))
        self._feed = frozen.inputs[0].name
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(frozen.graph.as_graph_def(), name="")
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        self._session = tf.compat.v1.Session(graph=graph, config=config)

    def runner(self, keys: list[str]):
        """images -> [the outputs named by `keys`], numpy."""
        fetches = [self._names[key] for key in keys]
        return lambda images: self._session.run(fetches, {self._feed: images})

    def executed_nodes(self, keys: list[str], images: np.ndarray) -> set[str]:
        """The graph's ops one call that fetches `keys` runs (what the session pruned, it did not);
        not the runtime's own (_SOURCE, _arg_..., _retval_...) nor constants, which grappler folds
        differently for each set of fetches."""
        import tensorflow as tf

        metadata = tf.compat.v1.RunMetadata()
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        self._session.run([self._names[key] for key in keys], {self._feed: images}, options=options,
                          run_metadata=metadata)
        return {node.node_name for device in metadata.step_stats.dev_stats for node in device.node_stats
                if not node.node_name.startswith("_") and not node.timeline_label.endswith("= Const()")}

    def close(self) -> None:
        self._session.close()


def pin_threads() -> None:
    """One intra-op and one inter-op thread for this process, before TensorFlow starts its pools."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # started already: fine only where it started with one thread
        pass
    if tf.config.threading.get_intra_op_parallelism_threads() != 1:
        raise RuntimeError("TensorFlow's thread pools started before pin_threads(): measure the score's "
                           "cost in a process of its own (python -m bench.score_cost)")


def measure(version_dir: Path, images: np.ndarray, batch_sizes: tuple[int, ...], seconds: float,
            rounds: int = 20) -> list[dict]:
    """One row per batch size: CPU µs per call without the score (the median of `rounds`) and with it
    (that plus the median of the rounds' differences, plain and scored taking turns), or [] where the
    version has no score output. Paired: a round that a neighbour on the machine slows, slows both;
    the least of a few rounds, used before, scattered by ±100 µs at batch 1 (docs/benchmarks.md)."""
    pin_threads()
    signature = FrozenSignature(version_dir)
    try:
        if SCORE_KEY not in signature.output_keys:
            return []
        plain, scored = signature.runner([OUTPUT_KEY]), signature.runner([OUTPUT_KEY, SCORE_KEY])
        rows = []
        for batch_size in batch_sizes:
            batch = np.resize(images, (batch_size, *images.shape[1:]))
            plain_us, added_us = [], []
            for _ in range(rounds):
                plain_us.append(cpu_microseconds(plain, batch, seconds / rounds / 2))
                added_us.append(cpu_microseconds(scored, batch, seconds / rounds / 2) - plain_us[-1])
            rows.append({"batch_size": batch_size, "plain_us": float(np.median(plain_us)),
                         "scored_us": float(np.median(plain_us) + np.median(added_us))})
        return rows
    finally:
        signature.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    pin_threads()  # before the workload's loader can start TensorFlow

    from bench.inprocess import latest_version
    from bench.workload import load_workload

    images = load_workload(args.model, args.data_dir, args.models_dir).floats()
    for row in measure(latest_version(args.models_dir, args.model), images, BATCH_SIZES, args.seconds,
                       args.rounds):
        print(json.dumps({"model": args.model, "score_cost": row}), flush=True)


if __name__ == "__main__":
    main()
