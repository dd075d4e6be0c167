"""Layer norms trained with the closed-form gradient (tfsft/layer_norm.py) compute what Keras's compute: the same
outputs bit for bit, the same gradients to float32 rounding, the same weights after training, stock saved files."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsft.layer_norm import use_closed_form_gradients


def _pair(shape, epsilon=1e-12, dtype=None):
    """Two built layer norms with the same non-trivial weights: stock, and one given the closed form."""
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 1.5, shape[-1:]), rng.normal(0.0, 0.1, shape[-1:])
    layers = []
    for _ in range(2):
        layer = keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype)
        layer.build(shape)
        layer.gamma.assign(gamma.astype("float32"))
        layer.beta.assign(beta.astype("float32"))
        layers.append(layer)
    assert use_closed_form_gradients(keras.Sequential([keras.Input(shape[1:]), layers[1]])) == 1
    return layers


def _outputs_and_gradients(layer, x, weights, eager=False):
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        return y, tape.gradient(loss, [x, layer.gamma, layer.beta])

    return run(x) if eager else tf.function(run)(x)


@pytest.mark.parametrize("shape", [(4, 7, 16), (3, 16), (2, 3, 5, 8)])
@pytest.mark.parametrize("eager", [False, True], ids=["traced", "eager"])
def test_same_outputs_bit_for_bit_and_gradients_to_rounding(shape, eager):
    stock, closed_form = _pair(shape)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(1.0, 3.0, shape).astype("float32"))
    weights = tf.constant(rng.normal(size=shape).astype("float32"))

    (y_stock, g_stock), (y_ours, g_ours) = (
        _outputs_and_gradients(layer, x, weights, eager) for layer in (stock, closed_form)
    )

    np.testing.assert_array_equal(y_ours.numpy(), y_stock.numpy())
    for name, ours, theirs in zip(("inputs", "gamma", "beta"), g_ours, g_stock):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        assert np.abs(ours.numpy()).max() > 0, name  # a gradient that vanished would pass allclose trivially


def test_half_precision_inputs_are_normalized_in_float32_like_keras():
    stock, closed_form = _pair((2, 5, 16), epsilon=1e-5, dtype="mixed_float16")
    x = tf.constant(np.random.default_rng(2).normal(0.0, 2.0, (2, 5, 16)), dtype=tf.float16)
    weights = tf.ones((2, 5, 16))

    (y_stock, g_stock), (y_ours, g_ours) = (_outputs_and_gradients(layer, x, weights) for layer in (stock, closed_form))

    assert y_ours.dtype == y_stock.dtype == tf.float16
    np.testing.assert_array_equal(y_ours.numpy(), y_stock.numpy())
    np.testing.assert_allclose(g_ours[1].numpy(), g_stock[1].numpy(), rtol=1e-3, atol=1e-3)


def _model(closed_form: bool) -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 8))
    x = keras.layers.LayerNormalization(axis=1, name="norm_over_time")(inputs)
    x = keras.layers.Dense(8, name="dense")(x)
    x = keras.layers.LayerNormalization(name="norm")(x)
    outputs = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    assert use_closed_form_gradients(model) == 1  # "norm_over_time" normalizes another axis: it stays stock
    if not closed_form:  # the reference model keeps Keras's own call
        del model.get_layer("norm").__dict__["call"]
    return model


def test_training_moves_the_weights_as_keras_autodiff_does_and_saves_a_stock_model(tmp_path):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(32, 6, 8)).astype("float32"), rng.integers(0, 2, 32)
    updates, trained = {}, {}
    for closed_form in (False, True):
        model = _model(closed_form)
        initial = [w.numpy() for w in model.weights]
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(True))
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        updates[closed_form] = [w.numpy() - before for w, before in zip(model.weights, initial)]
        trained[closed_form] = model

    # The updates themselves (not the weights, which training moves little) match, layer norm and layers below it.
    for weight, stock, ours in zip(trained[True].weights, updates[False], updates[True]):
        assert np.abs(stock).max() > 1e-3, weight.path  # every weight trained
        np.testing.assert_allclose(ours, stock, rtol=1e-3, atol=1e-6, err_msg=weight.path)

    trained[True].save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded.get_layer("norm")) is keras.layers.LayerNormalization
    assert "call" not in loaded.get_layer("norm").__dict__
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trained[True].predict(x, verbose=0))
