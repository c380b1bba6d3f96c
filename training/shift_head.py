"""A "shifted copy" head: beside the classes, the network learns to tell its training photos from the
shifted copies that outlier exposure adds (outliers.py), with a logistic output on the classifier's
input features. Shifted instances as a task of their own (Golan & El-Yaniv 2018; Hendrycks et al. 2019's
rotation head; Tack et al. 2020): the trunk then has to learn which way up a photo is and what its
colours should be, which the uniform answer of outlier exposure alone barely taught the quick network
(AUROC 0.59 on the half-turned photos it had trained on). The head's logit is a component of the
out-of-distribution score (ood.py, "shifted"); the classifier that is exported stays as it was.
"""

import keras
import numpy as np
import tensorflow as tf

from .models import LabelledAccuracy
from .outliers import outlier_rows


class ShiftHeadTrainer(keras.Model):
    """Trains `classifier` (compiled, one output) and the head together. Batches are outliers.py's
    (images, labels, sample weights), whose uniform label rows are the shifted copies; its loss is the
    classifier's compiled loss plus `weight` times the head's mean logistic loss over the rows that
    weigh anything in the global batch (a copy that equals its image weighs nothing in either).
    Predicting and evaluating answer the classifier's probabilities, so accuracy, validation and early
    stopping read as without it; the training loss includes the head's."""

    def __init__(self, classifier, weight, **kwargs):
        super().__init__(name=f"{classifier.name}_shift_head", **kwargs)
        self.classifier = classifier
        dense = [layer for layer in classifier.layers if isinstance(layer, keras.layers.Dense)][-1]
        self.features = keras.Model(classifier.inputs, [classifier.output, dense.input])
        self.head = keras.layers.Dense(1, name="shifted", dtype="float32")
        self.head.build(dense.input.shape)
        self.built = True  # its layers are: BackupAndRestore loads checkpoints only into a built model
        self.weight = float(weight)
        self.compile(optimizer=classifier.optimizer, loss=classifier.loss, metrics=[LabelledAccuracy()])

    @property
    def output_shape(self):
        return self.classifier.output_shape

    def call(self, images, training=False):
        return self.classifier(images, training=training)

    def train_step(self, data):
        images, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
        if weights is None:
            raise ValueError("a shift head trains on outlier exposure's (images, labels, weights) batches")
        with tf.GradientTape() as tape:
            probabilities, features = self.features(images, training=True)
            loss = self.compute_loss(x=images, y=labels, y_pred=probabilities, sample_weight=weights)
            logits = self.head(tf.cast(features, tf.float32))[:, 0]
            shifted = outlier_rows(labels)
            counted = tf.cast(weights > 0, tf.float32)
            per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=shifted, logits=logits)
            # Replicas' gradients are summed: each divides its rows' sum by the global batch's count
            # (copies sit at the end of a batch, so replicas hold different shares of them).
            counted_rows = tf.distribute.get_replica_context().all_reduce("sum", tf.reduce_sum(counted))
            head_loss = tf.reduce_sum(per_row * counted) / tf.maximum(counted_rows, 1.0)
            total = loss + self.weight * head_loss
            scaled = self.optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights, strict=True))
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        for metric in self.metrics:
            if metric.name == "loss":  # the total, as Keras' own step tracks it: unscaled by the replicas
                metric.update_state(total * replicas)
        return self.compute_metrics(images, labels, probabilities, sample_weight=weights)

    def head_weights(self):
        """(kernel [D, 1], bias [1]) as float32 numpy, for the score's graph."""
        kernel, bias = self.head.get_weights()
        return np.asarray(kernel, np.float32), np.asarray(bias, np.float32)
