"""BatchNormalization folded into the convolution before it, for serving.

At inference a BatchNormalization is a per-channel affine map, gamma·(x - mean)/sqrt(var + eps) + beta,
so after a convolution it can live in the convolution's kernel and bias: one op fewer per block and no
[batch, H, W, C] pass for the scaling. Keras 3 writes BatchNormalization as separate element-wise ops
(Rsqrt, Mul, Sub, AddV2), not FusedBatchNorm, so grappler's remapper (Conv2D + FusedBatchNorm ->
_FusedConv2D) never fuses them at serving time; folded, the convolution, its bias and the ReLU become
one _FusedConv2D. Measured in docs/benchmarks.md (issue 32).
"""

import collections

import keras
import numpy as np


def fold_batch_normalization(model):
    """A functional copy of `model` answering the same (up to float rounding) in inference, where every
    BatchNormalization that is the only consumer of a Conv2D's output is folded into that Conv2D (which
    gains a bias) and leaves the network. Other layers are copies, with the same names and weights."""
    folded_convolutions = _foldable_pairs(model)
    folded_normalizations = {normalization.name for normalization in folded_convolutions.values()}

    def clone(layer):
        if layer.name in folded_normalizations:
            return keras.layers.Identity(name=layer.name)
        config = layer.get_config()
        if layer.name in folded_convolutions:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        # A folded BatchNormalization's node is skipped: its input goes straight on to its consumers.
        return args[0] if layer.name in folded_normalizations else layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        # Weightless layers have nothing to copy (and an unnamed input layer's copy has a new name).
        if layer.name in folded_normalizations or not layer.weights:
            continue
        target = folded.get_layer(layer.name)
        if layer.name in folded_convolutions:
            target.set_weights(_folded_weights(layer, folded_convolutions[layer.name]))
        else:
            target.set_weights(layer.get_weights())
    return folded


def _foldable_pairs(model):
    """{Conv2D layer name: the BatchNormalization layer that follows it}, for the pairs that fold exactly."""
    # Who reads each layer's output: the layers' calls, and the model's caller for its outputs.
    consumers = collections.Counter(
        tensor._keras_history.operation.name
        for tensor in [*model.outputs, *(tensor for layer in model.layers for node in layer._inbound_nodes
                                         for tensor in node.input_tensors)])
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        inputs = layer._inbound_nodes[0].input_tensors
        producer = inputs[0]._keras_history.operation if len(inputs) == 1 else None
        # Exactly Conv2D: a subclass (a transposed or separable convolution) has another kernel layout.
        if (type(producer) is keras.layers.Conv2D
                and producer.data_format == "channels_last" and layer.axis in (-1, 3)
                and len(producer._inbound_nodes) == 1 and consumers[producer.name] == 1
                and producer.activation in (keras.activations.linear, None)):
            pairs[producer.name] = layer
    return pairs


def _folded_weights(convolution, normalization):
    """[kernel, bias] of `convolution` with `normalization`'s inference-time affine map folded in."""
    weights = {variable.name: np.asarray(variable.numpy(), np.float64)
               for variable in normalization.weights}
    channels = convolution.filters
    gamma = weights.get("gamma", np.ones(channels))
    beta = weights.get("beta", np.zeros(channels))
    scale = gamma / np.sqrt(weights["moving_variance"] + normalization.epsilon)
    kernel = np.asarray(convolution.kernel.numpy(), np.float64) * scale
    bias = np.asarray(convolution.bias.numpy(), np.float64) if convolution.use_bias else np.zeros(channels)
    bias = (bias - weights["moving_mean"]) * scale + beta
    return [kernel.astype(np.float32), bias.astype(np.float32)]
