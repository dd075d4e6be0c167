"""Dropout with its gradient written out, for training on the TensorFlow backend.

Keras's `Dropout` runs TensorFlow's `stateless_dropout`: `x * scale`, then a select against a scalar zero where the
random mask drops. TensorFlow differentiates both ops through its broadcasting machinery, and with the batch and
sequence length unknown each adds Shape / BroadcastGradientArgs / Sum / Reshape nodes: 14 nodes per dropout in the
training step's backward pass, 280 of MiniLM-L6's ~3,900 (20 dropouts), traced, optimized by grappler and run at
every step. The gradient is the forward select applied to `dy * scale`: 2 nodes.

The forward pass is Keras's: the seed drawn from the layer's own SeedGenerator (which advances as with Keras's
call), then `stateless_dropout`'s ops in its order, so the outputs are identical bit for bit and a run takes the
same random path (tested, traced and eager, float16 too). The gradient is identical too: TensorFlow's selects
`dy` then scales it, this scales then selects, and a dropped position is 0 either way. Only the layer's `call` is
replaced, on the instance: config, weights and saved files stay those of a stock `keras.layers.Dropout`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsft.keras_internals import dropout_seed_and_noise_shape, replace_call


def _dropout(x: tf.Tensor, rate: float, noise_shape, seed: tf.Tensor) -> tf.Tensor:
    """`tf.nn.experimental.stateless_dropout(x, rate, seed, noise_shape=noise_shape)`, its gradient written out."""
    scale = tf.convert_to_tensor(1 / (1 - rate), dtype=x.dtype)
    keep = tf.random.stateless_uniform(noise_shape, seed=seed, dtype=x.dtype, alg=None) >= rate
    zero = tf.constant(0, dtype=x.dtype)

    @tf.custom_gradient
    def masked(x):
        def gradient(dy):
            return tf.where(keep, dy * scale, zero)

        return tf.where(keep, x * scale, zero), gradient

    outputs = masked(x)
    outputs.set_shape(x.shape)
    return outputs


def _call(self: keras.layers.Dropout, inputs, training=False):
    # As keras.layers.Dropout.call and the TensorFlow backend's random.dropout, case by case.
    if not training or self.rate <= 0:
        return inputs
    if self.rate == 1.0:
        return tf.zeros_like(inputs)
    x = tf.convert_to_tensor(inputs)
    seed, noise_shape = dropout_seed_and_noise_shape(self, x)
    return _dropout(x, self.rate, noise_shape, seed)


def has_closed_form(layer: keras.layers.Layer) -> bool:
    """A stock `keras.layers.Dropout` (not a subclass such as SpatialDropout, whose call differs)."""
    return type(layer) is keras.layers.Dropout


def use_closed_form_dropout_gradients(model: keras.Model) -> int:
    """Give every stock Dropout inside `model` the closed-form gradient; returns how many."""
    return replace_call(model, has_closed_form, _call)
