"""What the out-of-distribution score costs a prediction: the exported `serving_default` run with and
without its `ood_score` output, CPU time per call at batch 1 and 32.

TF Serving runs a signature's whole function whichever outputs a request asks for, so a version
exported without the score is the only true "without". To compare the two from one export, the
signature is frozen (its variables made constants, its functions inlined) and run in a TF1
session — as TF Serving runs a graph: grappler-optimized, one intra-op thread as `make serve`
gives the model server — fetching `probabilities` alone (the session prunes every op the score
needs and the probabilities do not) or both. The other outputs' ops are few and small; their
share of a call is what this measures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SCORE_KEY = "ood_score"
OUTPUT_KEY = "probabilities"


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


def measure(version_dir: Path, images: np.ndarray, batch_sizes: tuple[int, ...], seconds: float,
            rounds: int = 5) -> list[dict]:
    """One row per batch size: CPU µs per call without and with the score (each the least of
    `rounds`, plain and scored taking turns), or [] where the version has no score output."""
    signature = FrozenSignature(version_dir)
    try:
        if SCORE_KEY not in signature.output_keys:
            return []
        plain, scored = signature.runner([OUTPUT_KEY]), signature.runner([OUTPUT_KEY, SCORE_KEY])
        rows = []
        for batch_size in batch_sizes:
            batch = np.resize(images, (batch_size, *images.shape[1:]))
            timings: dict[str, list[float]] = {"plain": [], "scored": []}
            for _ in range(rounds):
                timings["plain"].append(cpu_microseconds(plain, batch, seconds / rounds / 2))
                timings["scored"].append(cpu_microseconds(scored, batch, seconds / rounds / 2))
            rows.append({"batch_size": batch_size, "plain_us": min(timings["plain"]),
                         "scored_us": min(timings["scored"])})
        return rows
    finally:
        signature.close()
