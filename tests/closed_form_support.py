"""A tiny BERT backbone's training step with and without a closed-form gradient (tfsft/dropout_gradient.py,
tfsft/softmax_gradient.py): the same weights and random streams for both, and the comparison both tests make."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from conftest import TINY_BERT


def tiny_bert_step(use_closed_form=None, dropout: float = 0.1, padded: bool = False):
    """(how many layers `use_closed_form` changed, backbone, loss, gradients, graph nodes) of one traced step."""
    import keras_hub

    keras.utils.set_random_seed(5)  # same weights and the same seed-generator states for every backbone
    backbone = keras_hub.models.BertBackbone(vocabulary_size=100, **{**TINY_BERT["kwargs"], "dropout": dropout})
    count = use_closed_form(backbone) if use_closed_form else 0
    rng = np.random.default_rng(2)
    ids = rng.integers(5, 100, size=(4, 12)).astype("int32")
    padding = np.ones_like(ids)
    if padded:  # padded rows: the attention mask drops their keys
        padding[1, 7:] = padding[3, 4:] = 0
    batch = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": padding}
    head = tf.constant(rng.normal(size=(32,)), tf.float32)

    # Batch and length unknown, as in training on length-grouped batches.
    @tf.function(input_signature=[{name: tf.TensorSpec([None, None], tf.int32) for name in batch}])
    def step(batch):
        with tf.GradientTape() as tape:
            out = backbone(batch, training=True)
            loss = tf.reduce_sum(out["sequence_output"] * head)
        return loss, tape.gradient(loss, backbone.trainable_variables)

    loss, grads = step(batch)
    nodes = len(step.get_concrete_function().graph.as_graph_def().node)
    return count, backbone, loss, grads, nodes


def assert_same_loss_and_gradients(stock, ours) -> None:
    """Two `tiny_bert_step` results: the same loss and every gradient equal bit for bit."""
    _, _, loss_stock, grads_stock, _ = stock
    _, backbone, loss_ours, grads_ours, _ = ours
    assert float(loss_ours) == float(loss_stock)
    compared = 0
    for g_stock, g_ours in zip(grads_stock, grads_ours):
        assert (g_ours is None) == (g_stock is None)
        if g_stock is not None:  # the pooler is not in this loss
            np.testing.assert_array_equal(tf.convert_to_tensor(g_ours).numpy(), tf.convert_to_tensor(g_stock).numpy())
            compared += 1
    assert compared >= len(backbone.trainable_variables) - 2
