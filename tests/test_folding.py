"""Tests for training/folding.py: with BatchNormalization folded into the convolutions, the plain network
(on real images) and the residual one answer as before, through export and the out-of-distribution score.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import DATA_DIR
from training.datasets import load_data
from training.export import export_model
from training.folding import fold_batch_normalization
from training.models import build_model
from training.pipeline import _serving_model, fit_ood_score
from training.profiles import get_profile
from training.train import preprocess, train

BATCH_NORMALIZATION_OPS = {"Rsqrt", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}


def real_images(name, count):
    if not (DATA_DIR / f"{name}.npz").exists():
        pytest.skip(f"{DATA_DIR / f'{name}.npz'} does not exist")
    (x_train, y_train), (x_test, _) = load_data(name, DATA_DIR)
    return x_train[:count], y_train[:count], preprocess(x_test[:64])


@pytest.fixture(scope="module")
def mnist():
    return real_images("mnist", 600)


@pytest.fixture(scope="module")
def tiny_model(mnist):
    x_train, y_train, _ = mnist
    model = build_model("mnist", profile="tiny")
    train(model, x_train, y_train, epochs=1, batch_size=32, verbose=0)
    return model


def normalization_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def randomize_normalization(model, seed=0):
    """Statistics and scales far from a fresh layer's 0 and 1, so that folding them in is no identity."""
    rng = np.random.default_rng(seed)
    for layer in normalization_layers(model):
        gamma, beta, mean, variance = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.5, beta.shape),
                           rng.normal(0, 0.5, mean.shape), rng.uniform(0.2, 3, variance.shape)])


def graph_ops(function):
    graph = function.graph.as_graph_def()
    return {node.op for node in graph.node} | {node.op for function in graph.library.function
                                                 for node in function.node_def}


def test_folded_plain_network_answers_the_same(tiny_model, mnist):
    _, _, images = mnist
    folded = fold_batch_normalization(tiny_model)
    assert normalization_layers(tiny_model) and not normalization_layers(folded)
    convolutions = [layer for layer in folded.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convolutions) == 2 and all(layer.use_bias for layer in convolutions)
    # The layers the rest of the code finds by name or kind (training/ood.py) are still there.
    assert [layer.name for layer in folded.layers] == [
        layer.name for layer in tiny_model.layers if not isinstance(layer, keras.layers.BatchNormalization)]
    np.testing.assert_allclose(folded.predict(images, verbose=0), tiny_model.predict(images, verbose=0),
                               atol=1e-5)


def test_folded_residual_network_answers_the_same():
    # Random pixels suffice: folding must hold for any input, and loading CIFAR-10 takes seconds.
    images = np.random.default_rng(0).random((16, 32, 32, 3)).astype("float32")
    model = build_model("cifar10", profile="cpu")
    randomize_normalization(model)
    folded = fold_batch_normalization(model)
    assert len(normalization_layers(model)) == 8 and not normalization_layers(folded)
    np.testing.assert_allclose(folded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)


def test_only_a_convolution_feeding_nothing_else_folds():
    inputs = keras.Input((8, 8, 3))
    first = keras.layers.BatchNormalization(name="folds")(keras.layers.Conv2D(4, 3, name="alone")(inputs))
    shared = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="shared")(first)
    branch = keras.layers.Add()([keras.layers.BatchNormalization(name="stays")(shared), shared])
    dense = keras.layers.BatchNormalization(name="after_dense")(keras.layers.Dense(5)(branch))
    model = keras.Model(inputs, dense)
    randomize_normalization(model, seed=1)
    model.get_layer("alone").bias.assign(np.linspace(-1, 1, 4))
    folded = fold_batch_normalization(model)
    assert [layer.name for layer in normalization_layers(folded)] == ["stays", "after_dense"]
    assert not folded.get_layer("shared").use_bias
    # "alone" had a bias of its own: its folded bias adds it in (the answers below check the sum).
    images = np.random.default_rng(2).random((4, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(folded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)


def test_export_serves_the_folded_network(tiny_model, mnist, tmp_path):
    _, _, images = mnist
    image_spec = tf.TensorSpec([None, 28, 28, 1], tf.float32)
    unfolded = tf.function(lambda batch: tiny_model(batch, training=False)).get_concrete_function(image_spec)
    assert graph_ops(unfolded) & BATCH_NORMALIZATION_OPS  # the check below can see BatchNormalization

    serving_model = _serving_model(tiny_model, "mnist", get_profile("tiny", "mnist"), "float32")
    version_dir = export_model(serving_model, "mnist", tmp_path, metadata={})
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    assert not graph_ops(signature) & BATCH_NORMALIZATION_OPS
    np.testing.assert_allclose(signature(images=tf.constant(images))["probabilities"].numpy(),
                               tiny_model.predict(images, verbose=0), atol=1e-5)


def test_out_of_distribution_score_fits_the_same(tiny_model, mnist):
    x_train, y_train, _ = mnist
    scores = [fit_ood_score(model, "mnist", x_train, y_train, 0.1, seed=0)
              for model in (tiny_model, fold_batch_normalization(tiny_model))]
    assert scores[0].threshold == pytest.approx(scores[1].threshold, rel=1e-4)
    np.testing.assert_allclose(scores[1].class_offsets, scores[0].class_offsets, rtol=1e-3)
