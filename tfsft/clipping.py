"""The global gradient norm in one pass per gradient, an embedding's sparse gradient deduplicated, not made dense.

Used by global-norm clipping (tfsft.keras_internals.SinglePassGlobalNormClipping, which overrides Keras's private
`_clip_gradients`) and by the gradient-norm probe of step_logging: both build the same ops on the same gradients,
which grappler's duplicate-computation pass can merge (not checked on the optimized graph).
"""

from __future__ import annotations

import tensorflow as tf


def dense_rows(gradient: tf.IndexedSlices) -> tf.IndexedSlices:
    """An embedding's sparse gradient with each row index once (rows used several times in a batch summed): the
    same dense gradient, in rows whose squares sum to its squared norm."""
    unique, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(unique)[0])
    return tf.IndexedSlices(values, unique, gradient.dense_shape)


def global_norm(grads) -> tf.Tensor:
    """The global L2 norm (float32) of `grads` (None entries skipped; sparse ones deduplicated with `dense_rows`
    first), one `L2Loss` pass per tensor: Keras's `sqrt(sum(sum(square(g))))` writes every gradient's squares to
    memory and reads them back."""
    squares = []
    for gradient in grads:
        if gradient is None:
            continue
        values = dense_rows(gradient).values if isinstance(gradient, tf.IndexedSlices) else gradient
        squares.append(2.0 * tf.nn.l2_loss(tf.cast(values, tf.float32)))
    return tf.sqrt(tf.add_n(squares)) if squares else tf.constant(0.0)
