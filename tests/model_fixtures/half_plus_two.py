"""A TF1-style SavedModel in the manner of TF Serving's `half_plus_two` test model, built here.

y = 0.5 * x + 2 behind the signatures TF Serving's documentation calls (`serving_default`
predict, `regress_x_to_y`, `regress_x_to_y2`, `regress_x2_to_y3`, `classify_x_to_y`,
all but one reading serialized tf.Examples), plus signatures with string, integer,
half-precision and several inputs/outputs, class labels, a counter, and one that never
finishes, so tests reach every path of the REST and gRPC APIs. Written with tf.compat.v1 and
SavedModelBuilder: a graph with several signatures and inner-tensor inputs, loaded the
way TF Serving loads it (not by tf.saved_model.load).
"""

from __future__ import annotations

import os

import tensorflow as tf

v1 = tf.compat.v1
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def export_half_plus_two(export_dir: str | os.PathLike[str], *, bias: float = 2.0, bias2: float = 3.0) -> str:
    """Write version directory `export_dir`: y = 0.5x + bias, y2 = 0.5x + bias2, y3 = 0.5x2 + bias2."""
    export_dir = os.fspath(export_dir)
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        slope = v1.Variable(0.5, name="a")
        offset = v1.Variable(bias, name="b")
        offset2 = v1.Variable(bias2, name="c")

        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
        features = v1.io.parse_example(
            serialized,
            {
                "x": v1.io.FixedLenFeature([1], tf.float32),
                "x2": v1.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        # Inner tensors with names: predict feeds `x` directly, any shape, as TF Serving does.
        x = tf.identity(features["x"], name="x")
        x2 = tf.identity(features["x2"], name="x2")
        y = tf.identity(slope * x + offset, name="y")
        y2 = tf.identity(slope * x + offset2, name="y2")
        y3 = tf.identity(slope * x2 + offset2, name="y3")

        # Two classes per example, labelled, scored y and y2.
        scores = tf.concat([y, y2], axis=1, name="scores")
        labels = tf.tile(tf.constant([["y", "y2"]]), tf.stack([tf.shape(y)[0], 1]), name="labels")

        names = v1.placeholder(tf.string, shape=[None], name="names")
        greeting = tf.strings.join(["Hello, ", names, "!"], name="greeting")
        counts = v1.placeholder(tf.int32, shape=[None], name="counts")
        halves = v1.placeholder(tf.float16, shape=[None], name="halves")
        # Never finishes: a dequeue from a queue nothing fills (for deadline tests).
        queue = v1.FIFOQueue(1, tf.float32, shapes=[[]], name="never_filled")
        stuck = tf.identity(x + queue.dequeue(), name="stuck")
        # State across runs, as TF Serving's saved_model_counter: counts the runs of incr_counter.
        counter = v1.Variable(0.0, name="counter")
        with tf.control_dependencies([counter.assign_add(1.0)]):
            incremented = tf.identity(counter.read_value(), name="incremented")

        signatures = {
            "serving_default": _signature({"x": x}, {"y": y}, PREDICT),
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, REGRESS),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, REGRESS),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, REGRESS),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, CLASSIFY),
            "classify_x_to_labels": _signature(
                {"inputs": serialized}, {"classes": labels, "scores": scores}, CLASSIFY
            ),
            "classify_labels_only": _signature({"inputs": serialized}, {"classes": labels}, CLASSIFY),
            "greet": _signature(
                {"name": names}, {"greeting": greeting, "name_bytes": tf.identity(names)}, PREDICT
            ),
            "two_inputs": _signature({"x": x, "name": names}, {"y": y, "greeting": greeting}, PREDICT),
            "double_counts": _signature({"counts": counts}, {"doubled": counts * 2}, PREDICT),
            "halves": _signature({"halves": halves}, {"doubled": halves * 2}, PREDICT),
            "scalar": _signature({"x": x}, {"total": tf.reduce_sum(y)}, PREDICT),
            "stuck": _signature({"x": x}, {"y": stuck}, PREDICT),
            "incr_counter": _signature({}, {"count": incremented}, PREDICT),
            "get_counter": _signature({}, {"count": counter.read_value()}, PREDICT),
        }
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    return export_dir


def _signature(inputs: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor], method: str) -> object:
    return v1.saved_model.build_signature_def(
        {alias: v1.saved_model.build_tensor_info(tensor) for alias, tensor in inputs.items()},
        {alias: v1.saved_model.build_tensor_info(tensor) for alias, tensor in outputs.items()},
        method,
    )
