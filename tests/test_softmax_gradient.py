"""Masked softmax with its gradient written out (tfsft/softmax_gradient.py): the same outputs and the same gradients
as Keras's own Softmax, bit for bit, with a smaller training graph."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from closed_form_support import assert_same_loss_and_gradients, tiny_bert_step
from conftest import TINY_BERT
from tfsft.softmax_gradient import use_closed_form_softmax_gradients


def _pair(axis=-1, dtype=None):
    """Two Softmax layers: stock, and one given the closed form."""
    layers = [keras.layers.Softmax(axis=axis, dtype=dtype) for _ in range(2)]
    assert use_closed_form_softmax_gradients(keras.Sequential([keras.Input((3, 4, 6)), layers[1]])) == 1
    return layers


def _outputs_and_gradient(layer, x, mask, weights, eager):
    def run(x, mask):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, mask=mask)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        return y, tape.gradient(loss, x)

    if eager:
        return run(x, mask)
    unknown = [tf.TensorSpec([None] * 4, x.dtype), tf.TensorSpec([None, 1, None, None], mask.dtype)]
    return tf.function(run, input_signature=unknown)(x, mask)


def _mask(dtype):
    mask = np.random.default_rng(1).random((2, 1, 4, 6)) > 0.4
    mask[0, 0, 1, :] = False  # a row masked entirely: Keras outputs zeros there
    mask[1, 0, 2, :] = True
    return tf.constant(mask.astype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mask_dtype", ["bool", "float32"])
@pytest.mark.parametrize("eager", [False, True], ids=["traced", "eager"])
def test_same_outputs_and_gradients_bit_for_bit(dtype, mask_dtype, eager):
    stock, ours = _pair(dtype=dtype)
    rng = np.random.default_rng(0)
    x = tf.constant((rng.normal(size=(2, 3, 4, 6)) * 3).astype(dtype))
    weights = tf.constant(rng.normal(size=(2, 3, 4, 6)).astype("float32"))
    mask = _mask(mask_dtype)
    y_stock, g_stock = _outputs_and_gradient(stock, x, mask, weights, eager)
    y_ours, g_ours = _outputs_and_gradient(ours, x, mask, weights, eager)
    assert y_ours.dtype == y_stock.dtype
    np.testing.assert_array_equal(y_ours.numpy(), y_stock.numpy())
    np.testing.assert_array_equal(g_ours.numpy(), g_stock.numpy())
    dropped = np.broadcast_to(~_mask("bool").numpy(), x.shape)
    assert (g_ours.numpy()[dropped] == 0).all() and (g_ours.numpy()[~dropped] != 0).mean() > 0.9
    assert (y_ours.numpy()[0, :, 1, :] == 0).all()  # the fully masked row


def test_without_a_mask_or_over_another_axis_it_is_keras_call():
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 3, 4, 6)).astype("float32"))
    stock, ours = _pair()
    np.testing.assert_array_equal(ours(x).numpy(), stock(x).numpy())
    stock, ours = _pair(axis=1)
    mask = tf.constant(np.random.default_rng(4).random((2, 3, 4, 6)) > 0.3)
    np.testing.assert_array_equal(ours(x, mask=mask).numpy(), stock(x, mask=mask).numpy())


def test_a_bert_backbone_trains_with_closed_form_attention_softmaxes_the_same_gradients_and_fewer_nodes():
    # With dropout, Keras's attention takes the explicit path through its Softmax layer (without it,
    # `ops.dot_product_attention`); padded rows give the mask something to drop.
    stock = tiny_bert_step(dropout=0.1, padded=True)
    ours = tiny_bert_step(use_closed_form_softmax_gradients, dropout=0.1, padded=True)
    count, nodes_stock, nodes_ours = ours[0], stock[4], ours[4]
    assert count == TINY_BERT["kwargs"]["num_layers"]  # one per attention layer
    assert_same_loss_and_gradients(stock, ours)
    assert nodes_ours <= nodes_stock - 15 * count, (nodes_stock, nodes_ours)


def test_saved_model_file_holds_stock_softmaxes(tmp_path):
    inputs = keras.Input((4, 6))
    model = keras.Model(inputs, keras.layers.Softmax(name="probs")(keras.layers.Dense(6)(inputs)))
    assert use_closed_form_softmax_gradients(model) == 1
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded.get_layer("probs")) is keras.layers.Softmax
    assert "call" not in loaded.get_layer("probs").__dict__
