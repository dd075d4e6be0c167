"""Dropout with its gradient written out (tfsft/dropout_gradient.py): the same outputs, the same random stream and
the same gradients as Keras's own Dropout, bit for bit, with a smaller training graph."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from closed_form_support import assert_same_loss_and_gradients, tiny_bert_step
from conftest import TINY_BERT
from tfsft.dropout_gradient import use_closed_form_dropout_gradients


def _pair(rate=0.3, noise_shape=None, dtype=None):
    """Two Dropout layers with the same seed: stock, and one given the closed form."""
    layers = [keras.layers.Dropout(rate, noise_shape=noise_shape, seed=7, dtype=dtype) for _ in range(2)]
    assert use_closed_form_dropout_gradients(keras.Sequential([keras.Input((5, 8)), layers[1]])) == 1
    return layers


def _outputs_and_gradient(layer, x, weights, eager):
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        return y, tape.gradient(loss, x)

    return run(x) if eager else tf.function(run)(x)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("noise_shape", [None, (None, 1, 8)], ids=["full-mask", "noise-shape"])
@pytest.mark.parametrize("eager", [False, True], ids=["traced", "eager"])
def test_same_outputs_random_stream_and_gradients_bit_for_bit(dtype, noise_shape, eager):
    stock, ours = _pair(noise_shape=noise_shape, dtype=dtype)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(4, 5, 8)).astype(dtype))
    weights = tf.constant(rng.normal(size=(4, 5, 8)).astype("float32"))
    for _ in range(3):  # each call draws the next mask: both generators advance alike
        y_stock, g_stock = _outputs_and_gradient(stock, x, weights, eager)
        y_ours, g_ours = _outputs_and_gradient(ours, x, weights, eager)
        assert y_ours.dtype == y_stock.dtype == tf.as_dtype(dtype)
        np.testing.assert_array_equal(y_ours.numpy(), y_stock.numpy())
        np.testing.assert_array_equal(g_ours.numpy(), g_stock.numpy())
        dropped = y_stock.numpy() == 0
        assert 0 < dropped.mean() < 1  # the mask does drop, and keeps
        assert (g_ours.numpy()[dropped] == 0).all()


def test_inference_rate_zero_and_rate_one_behave_as_keras():
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 5, 8)).astype("float32"))
    _, ours = _pair()
    assert ours(x, training=False) is x
    none, all_ = _pair(rate=0.0)[1], _pair(rate=1.0)[1]
    np.testing.assert_array_equal(none(x, training=True).numpy(), x.numpy())
    np.testing.assert_array_equal(all_(x, training=True).numpy(), np.zeros_like(x.numpy()))


def test_a_bert_backbone_trains_with_every_dropout_closed_form_the_same_gradients_and_fewer_nodes():
    stock = tiny_bert_step(dropout=0.2)
    ours = tiny_bert_step(use_closed_form_dropout_gradients, dropout=0.2)
    count, backbone, nodes_stock, nodes_ours = ours[0], ours[1], stock[4], ours[4]
    dropouts = [layer for layer in backbone._flatten_layers(include_self=False) if type(layer) is keras.layers.Dropout]
    # embeddings, and per encoder layer: attention probabilities (inside the attention layer), attention output,
    # feedforward output
    assert count == len(dropouts) == 1 + 3 * TINY_BERT["kwargs"]["num_layers"]
    assert all("call" in layer.__dict__ for layer in dropouts)
    assert_same_loss_and_gradients(stock, ours)
    assert nodes_ours <= nodes_stock - 8 * count  # ~14 backward nodes per dropout become 2 (+ the gradient's wrapper)


def test_saved_model_file_holds_stock_dropouts(tmp_path):
    inputs = keras.Input((5, 8))
    outputs = keras.layers.Dense(2)(keras.layers.Dropout(0.3, name="drop")(inputs))
    model = keras.Model(inputs, outputs)
    assert use_closed_form_dropout_gradients(model) == 1
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded.get_layer("drop")) is keras.layers.Dropout
    assert "call" not in loaded.get_layer("drop").__dict__
    assert loaded.get_layer("drop").get_config() == model.get_layer("drop").get_config()
