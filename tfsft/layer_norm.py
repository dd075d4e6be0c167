"""Layer normalization with a closed-form gradient, for training on the TensorFlow backend.

Keras computes `LayerNormalization` from elementary ops (moments, rsqrt, scale, shift) and TensorFlow
differentiates each of them: with batch and sequence length unknown, every broadcast in the backward pass adds
Shape / BroadcastGradientArgs / Sum / Reshape nodes. For MiniLM-L6 the 13 layer norms were 1,300 of the
training step's 4,856 nodes, traced, optimized by grappler and run at every step. With the gradient written out
(dx = rstd * (g - mean(g) - x̂ * mean(g * x̂)), g = dy * gamma) the step has 4,037.

The forward pass is Keras's own sequence of ops (the outputs are identical, bit for bit, tested); the gradients
agree with TensorFlow's to float32 rounding. Only the layer's `call` is replaced, on the instance: its config,
weights and saved files stay those of a stock `keras.layers.LayerNormalization`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tfsft.keras_internals import replace_call


def _normalize(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Keras's `ops.layer_normalization(x, gamma, beta, axis=-1)` (same ops, same order), closed-form gradient."""

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        mean, variance = tf.nn.moments(x, [-1], keepdims=True)
        inv = tf.math.rsqrt(variance + epsilon)
        scale = inv * gamma
        outputs = x * scale + (-mean * scale + beta)

        def gradient(dy):
            normalized = (x - mean) * inv
            g = dy * gamma
            dx = inv * (
                g
                - tf.reduce_mean(g, -1, keepdims=True)
                - normalized * tf.reduce_mean(g * normalized, -1, keepdims=True)
            )
            batch_axes = list(range(x.shape.rank - 1))
            return dx, tf.reduce_sum(dy * normalized, batch_axes), tf.reduce_sum(dy, batch_axes)

        return outputs, gradient

    return normalize(x, gamma, beta)


def _call(self: keras.layers.LayerNormalization, inputs):
    # As keras.ops.layer_normalization: statistics in at least float32, back to the input's dtype, then to the
    # layer's compute dtype (LayerNormalization.call).
    x = ops.convert_to_tensor(inputs)
    original_dtype = x.dtype
    compute_dtype = keras.backend.result_type(x.dtype, "float32")
    x = ops.convert_to_tensor(x, dtype=compute_dtype)
    # Read here: tf.custom_gradient refuses a function that reads variables itself (Keras's convert_to_tensor
    # hands the variable through).
    gamma = ops.convert_to_tensor(tf.convert_to_tensor(self.gamma), dtype=compute_dtype)
    beta = ops.convert_to_tensor(tf.convert_to_tensor(self.beta), dtype=compute_dtype)
    outputs = _normalize(x, gamma, beta, self.epsilon)
    return ops.cast(ops.cast(outputs, original_dtype), self.compute_dtype)


def has_closed_form(layer: keras.layers.Layer) -> bool:
    """A built, stock LayerNormalization over the last axis with scale and centre (what BERT-family models use)."""
    return (
        type(layer) is keras.layers.LayerNormalization
        and layer.built
        and layer.axis in (-1, [-1])
        and layer.center
        and layer.scale
        and not layer.rms_scaling
    )


def use_closed_form_gradients(model: keras.Model) -> int:
    """Give every eligible layer norm inside `model` the closed-form gradient; returns how many."""
    return replace_call(model, has_closed_form, _call)
