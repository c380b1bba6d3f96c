"""Model definitions: a CNN per data set (sized by a profile) and the course's MLP baseline.

Models take float32 images [H, W, C] scaled to [0, 1] and answer softmax probabilities
over the data set's classes; they come back compiled, ready for `fit` on one-hot labels.
`name` is a built-in data set's name or a DatasetSpec (a folder of one's own images).
"""

import re

import keras
from keras import layers

from .datasets import get_spec
from .outliers import outlier_rows
from .profiles import Profile, get_profile
from .schedules import OneCycle

BASELINE_EPOCHS = 5
BASELINE_BATCH_SIZE = 128
# The residual networks' logits are scaled down before the softmax, as in Page's ResNet:
# it keeps the early, high-learning-rate steps of one-cycle SGD stable.
LOGIT_SCALE = 0.125


def build_model(name, profile="quick", *, steps_per_epoch=1, settings=None):
    """A compiled CNN; `steps_per_epoch` sizes the learning-rate schedule."""
    spec = get_spec(name)
    settings = settings or get_profile(profile, name)
    inputs = keras.Input(shape=(spec.height, spec.width, spec.channels), name="images")
    if settings.architecture == "plain":
        outputs = _plain_network(inputs, settings, len(spec.classes))
    elif settings.architecture == "residual":
        outputs = _residual_network(inputs, settings, len(spec.classes))
    else:
        raise ValueError(f"unknown architecture {settings.architecture!r}; expected 'plain' or 'residual'")
    model = keras.Model(inputs, outputs, name=f"{_keras_name(spec.name)}_cnn")
    model.compile(
        optimizer=build_optimizer(settings, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing),
        metrics=[LabelledAccuracy()],
    )
    return model


@keras.saving.register_keras_serializable(package="pixelgate")
class LabelledAccuracy(keras.metrics.CategoricalAccuracy):
    """"accuracy" over the images that have a class: the outliers of outlier exposure (outliers.py) are
    labelled with the uniform distribution, which no answer can match."""

    def __init__(self, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labelled = 1.0 - outlier_rows(y_true)
        return super().update_state(y_true, y_pred, sample_weight=labelled)


def _keras_name(name):
    # Model names may hold '.' and '-', which Keras' layer names do not take.
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _convolution(x, filters):
    # No bias: BatchNormalization's offset does that job.
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)  # Keras' 0.99 lags behind in short runs
    return layers.ReLU()(x)


def _plain_network(inputs, settings, num_classes):
    x = inputs
    for filters in settings.filters:
        for _ in range(settings.convolutions_per_stage):
            x = _convolution(x, filters)
        x = layers.MaxPooling2D()(x)
    # Flatten, not global pooling: the last map is small (at most 8x8) and a flattened
    # head learns in far fewer steps, which the short profiles depend on.
    x = layers.Flatten()(x)
    if settings.dense_units:
        x = layers.Dropout(settings.dropout)(x)
        x = layers.Dense(settings.dense_units, activation="relu")(x)
    x = layers.Dropout(settings.dropout)(x)
    return layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)


def _residual_network(inputs, settings, num_classes):
    """ResNet-9's layout: a stem, then per stage convolution, pooling and maybe a residual block."""
    stem, *stages = settings.filters
    if len(settings.residual_stages) != len(stages):
        raise ValueError("residual_stages needs one entry per stage after the stem")
    x = _convolution(inputs, stem)
    for filters, residual in zip(stages, settings.residual_stages, strict=True):
        x = layers.MaxPooling2D()(_convolution(x, filters))
        if residual:
            x = layers.Add()([x, _convolution(_convolution(x, filters), filters)])
    x = layers.GlobalMaxPooling2D()(x)
    if settings.dropout:
        x = layers.Dropout(settings.dropout)(x)
    logits = layers.Dense(num_classes, use_bias=False)(x)
    logits = layers.Rescaling(LOGIT_SCALE)(logits)
    return layers.Softmax(name="probabilities", dtype="float32")(logits)


def build_optimizer(settings: Profile, steps_per_epoch):
    total_steps = max(settings.epochs * steps_per_epoch, 1)
    if settings.schedule == "one_cycle":
        learning_rate = OneCycle(settings.learning_rate, total_steps, settings.warmup_fraction)
    elif settings.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(settings.learning_rate, total_steps)
    else:
        raise ValueError(f"unknown schedule {settings.schedule!r}; expected 'one_cycle' or 'cosine'")
    decay = settings.weight_decay or None
    if settings.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, weight_decay=decay)
    elif settings.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=settings.weight_decay)
    elif settings.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=decay)
    else:
        raise ValueError(f"unknown optimizer {settings.optimizer!r}; expected 'sgd', 'adamw' or 'adam'")
    if settings.weight_decay:
        # Decay shrinks what scales the output; BatchNorm's scale and offset and the biases only shift it.
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


class FlipAveraging(keras.layers.Layer):
    """Test-time augmentation: the mean of the model's answers for an image and its mirror image."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def call(self, images, training=False):
        mirrored = keras.ops.flip(images, axis=2)
        return (self.model(images, training=training) + self.model(mirrored, training=training)) / 2


def with_flip_averaging(model):
    """`model` wrapped so that it answers the mean over the image and its mirror image."""
    inputs = keras.Input(shape=model.input_shape[1:], name="images")
    outputs = FlipAveraging(model, name="probabilities")(inputs)
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_averaged")


class TemperatureScaling(keras.layers.Layer):
    """softmax(log(p) / T) with a temperature fitted on held-out images: calibrated
    probabilities, the same ranking (metrics.apply_temperature is the same in numpy)."""

    def __init__(self, temperature, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probabilities):
        logits = keras.ops.log(keras.ops.maximum(probabilities, 1e-12)) / self.temperature
        return keras.ops.softmax(logits, axis=-1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def with_temperature(model, temperature):
    """`model` with its probabilities recalibrated by `temperature`."""
    inputs = keras.Input(shape=model.input_shape[1:], name="images")
    outputs = TemperatureScaling(temperature, name="probabilities")(model(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_calibrated")


def build_baseline_mlp(name="mnist"):
    """The course material's network: Flatten, Dense(512, relu), Dense(10, softmax), RMSprop."""
    spec = get_spec(name)
    model = keras.Sequential(
        [
            keras.Input(shape=(spec.height, spec.width, spec.channels), name="images"),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dense(len(spec.classes), activation="softmax", name="probabilities"),
        ],
        name=f"{_keras_name(spec.name)}_mlp",
    )
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    return model
