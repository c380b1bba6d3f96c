"""What the out-of-distribution score (ood.py) reads from one of pixelgate's own networks: its
probabilities, logits, pooled penultimate features and early stages' statistics, from one pass.
"""

import keras
import numpy as np
import tensorflow as tf

from .models import FlipAveraging, TemperatureScaling

# Earlier stages scored ("stages"): the first only. On the quick cifar10 model stages 1-3 flagged 88.9 % of
# foreign images on average and stage 1 alone 89.0 %, while each stage's ops cost a lone image's call
# about 80 µs (docs/training.md).
STAGES = 1


def classifier_parts(serving_model):
    """(core network, mirror-averaged?, temperature or None) of a model that pipeline._serving_model
    and models.with_temperature built."""
    model, temperature, flip = serving_model, None, False
    if isinstance(model.layers[-1], TemperatureScaling):
        temperature = model.layers[-1].temperature
        model = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    if isinstance(model.layers[-1], FlipAveraging):
        flip, model = True, model.layers[-1].model
    return model, flip, temperature


class FeatureClassifier:
    """images -> (probabilities exactly as the serving model answers them, features, the logits), from
    one pass through the network. features: {"penultimate": pooled [N, D], "classifier_input": what the
    classifier layer reads [N, D'] (flattened, where the network flattens)} and, with `stages`, the
    output of the first STAGES pooling layers but the last (residual networks: before the stage's
    residual block) as `_channel_statistics`, {"stage_1": [N, 2C], ...}."""

    def __init__(self, serving_model, *, stages=False):
        core, self.flip, temperature = classifier_parts(serving_model)
        self.classifier = [layer for layer in core.layers if isinstance(layer, keras.layers.Dense)][-1]
        # Between the classifier and the softmax, the residual networks scale their logits.
        following = core.layers[core.layers.index(self.classifier) + 1:]
        self.logit_scale = float(np.prod([layer.scale for layer in following
                                          if isinstance(layer, keras.layers.Rescaling)]))
        # The last pooling's output is what the penultimate features summarize already; of the others,
        # the first STAGES (see STAGES).
        pooling = [layer for layer in core.layers if isinstance(layer, keras.layers.MaxPooling2D)][:-1]
        self.stages = min(len(pooling), STAGES) if stages else 0
        for layer in pooling[:self.stages]:  # _channel_statistics takes square roots of their means
            if not isinstance(_producer(layer.input), keras.layers.ReLU):
                raise ValueError(f"{layer.name}: stage statistics need a map of ReLU outputs to pool")
        # A flattened feature map is pooled over its positions: Mahalanobis distances want one
        # vector per image whatever the object's position (Lee et al. pool each block the same way).
        # Pooled from the map itself, one op (its flattened copy would need reshaping first).
        feeding = _producer(self.classifier.input)
        while isinstance(feeding, keras.layers.Dropout):
            feeding = _producer(feeding.input)
        pooled_map = [feeding.input] if isinstance(feeding, keras.layers.Flatten) else []
        self.pooled = bool(pooled_map)
        self.network = keras.Model(core.inputs, [core.output, self.classifier.input, *pooled_map,
                                                 *(layer.output for layer in pooling[:self.stages])])
        self.temperature = TemperatureScaling(temperature) if temperature is not None else None

    def __call__(self, images):
        probabilities, inputs, *features = self._outputs(images)
        if self.flip:
            mirrored = self._outputs(tf.reverse(images, axis=[2]))
            probabilities, inputs, *features = [(own + other) / 2 for own, other in zip(
                [probabilities, inputs, *features], mirrored, strict=True)]
        if self.temperature is not None:
            probabilities = self.temperature(probabilities)
        # Few, small ops: at batch 1 each one costs a prediction a few microseconds, whatever it computes.
        logits = tf.matmul(inputs, self.classifier.kernel)
        if self.classifier.use_bias:
            logits = logits + self.classifier.bias
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        penultimate = features.pop(0) if self.pooled else inputs
        stages = {f"stage_{number}": value for number, value in enumerate(features, start=1)}
        # The classifier's input, which a shift head (shift_head.py) reads as the classes do.
        return probabilities, {"penultimate": penultimate, "classifier_input": inputs, **stages}, logits

    def _outputs(self, images):
        """[probabilities, the classifier's input, (pooled features,) each stage's statistics]."""
        probabilities, inputs, *maps = self.network(images, training=False)
        pooled = [tf.reduce_mean(maps.pop(0), axis=[1, 2])] if self.pooled else []
        return [probabilities, inputs, *pooled, *(_channel_statistics(feature_map) for feature_map in maps)]

    def predict(self, images, batch_size=500):
        """numpy (probabilities, features, logits) for float32 images."""
        batches = [self(tf.constant(images[start:start + batch_size]))
                   for start in range(0, len(images), batch_size)]
        features = {key: np.concatenate([np.asarray(batch[1][key]) for batch in batches])
                    for key in batches[0][1]}
        return (np.concatenate([np.asarray(batch[0]) for batch in batches]), features,
                np.concatenate([np.asarray(batch[2]) for batch in batches]))


def _producer(tensor):
    """The layer whose output a symbolic Keras tensor is."""
    return tensor._keras_history.operation


def _channel_statistics(feature_map):
    """[N, 2C]: the square roots of each channel's mean and mean square over the positions of [N, H, W, C],
    a map of ReLU outputs (never negative). Five small ops, where the mean and deviation of tf.nn.moments
    took nine; on the quick cifar10 model, square roots flagged a little more foreign images than the
    mean and deviation did and the moments themselves fewer (90.95 %, 90.64 %, 90.16 %; docs/training.md)."""
    return tf.sqrt(tf.concat([tf.reduce_mean(feature_map, axis=[1, 2]),
                              tf.reduce_mean(tf.square(feature_map), axis=[1, 2])], axis=1))
