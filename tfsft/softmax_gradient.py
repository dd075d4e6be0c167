"""Masked softmax (attention's probabilities) with its gradient written out, for training on TensorFlow.

Given a mask, Keras's `Softmax` runs three ops: a select that puts -1e9 where the mask is False, the softmax, and a
select that puts 0 there (for a row masked entirely). TensorFlow differentiates each select through its
broadcasting machinery, the attention mask being [batch, 1, queries, keys] against [batch, heads, queries, keys]
scores, and with the batch and length unknown each branch adds Shape / BroadcastGradientArgs / Sum / Reshape
nodes: about 30 backward nodes per attention layer, traced, optimized by grappler and run at every step. Written
out, the gradient is the same three steps backwards: select, softmax's own `(g - sum(g * y)) * y`, select.

The forward pass is Keras's own `Softmax.call` (same ops; outputs identical bit for bit). The gradient is too:
TensorFlow's selects `dy` where the mask keeps, takes the softmax gradient with the softmax's output `y`, and
selects again; this uses the layer's output instead of `y`, which differs from it only where the mask drops, and
there the first select has zeroed the gradient and the last one zeroes the result. Only the layer's `call` is
replaced, on the instance: config and saved files stay those of a stock `keras.layers.Softmax`. A softmax over
several axes, or over one that is not the last, keeps Keras's call.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tfsft.keras_internals import replace_call


def _over_last_axis(axis, rank: int) -> bool:
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def _call(self: keras.layers.Softmax, inputs, mask=None):
    x = tf.convert_to_tensor(inputs)
    if mask is None or x.shape.rank is None or not _over_last_axis(self.axis, x.shape.rank):
        return keras.layers.Softmax.call(self, inputs, mask=mask)
    # As Softmax.call reads the mask: kept where True, or where > 0.5.
    keep = (
        mask if keras.backend.standardize_dtype(mask.dtype) == "bool" else ops.greater(mask, ops.cast(0.5, mask.dtype))
    )

    @tf.custom_gradient
    def masked_softmax(x):
        outputs = keras.layers.Softmax.call(self, x, mask=mask)

        def gradient(dy):
            zero = tf.constant(0, dtype=dy.dtype)
            g = tf.where(keep, dy, zero)
            return tf.where(keep, (g - tf.reduce_sum(g * outputs, axis=-1, keepdims=True)) * outputs, zero)

        return outputs, gradient

    return masked_softmax(x)


def has_closed_form(layer: keras.layers.Layer) -> bool:
    """A stock `keras.layers.Softmax` (as in Keras's and KerasHub's attention layers), not a subclass."""
    return type(layer) is keras.layers.Softmax


def use_closed_form_softmax_gradients(model: keras.Model) -> int:
    """Give every stock Softmax inside `model` the closed-form masked gradient; returns how many."""
    return replace_call(model, has_closed_form, _call)
