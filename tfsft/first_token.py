"""A text head that reads only the first token lets the backbone's last encoder layer compute only that token.

With `model.head.pooling: cls` (the first token's vector) or `pooled` (BERT's pooler, a Dense on the first token),
nothing downstream reads positions 1..L of the last encoder layer's output. Their attention output, feed-forward
block and layer norms are most of that layer's work (for a 6-layer MiniLM, ~14 % of the encoder's FLOPs); the first
position still attends to the keys and values of every token, so its vector is the one the full layer computes (up
to float rounding). Training, evaluation, the exported SavedModel and ONNX all run the shorter layer: its gradients
for the weights are the same as the full layer's, since the other positions never reached the loss. In training,
the layer's dropout masks at position 0 are the ones the full layer draws there (`dropout_as_full_layer`), so a run
takes the same random path, and ends with the same model up to float rounding, with or without the shortcut.

What changes is only how that one layer instance runs: its class becomes `FirstTokenTransformerEncoder`, a
subclass of KerasHub's `TransformerEncoder` with the same weights, config, layer name and class name, so
checkpoints, `model.keras` files, freezing and per-layer learning rates see the same layer. The backbone's
`sequence_output` then has length 1; tfsft's head is the only reader of it. The shortcut applies where the
structure guarantees it is exact:
a KerasHub backbone whose `sequence_output` comes straight from a plain `TransformerEncoder` called once and, if
it has a pooled output, whose pooler reads token 0 (checked on the built backbone, not by name: tested on BERT, and
refused for ALBERT, whose one encoder layer is shared by the whole stack). Anything else trains exactly as before.

Reads private attributes of `keras_hub.layers.TransformerEncoder` (its sublayers): keras-hub is pinned to a minor
version in pyproject.toml and `tests/test_first_token.py` checks the names.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import keras
import tensorflow as tf
from keras_hub.layers import TransformerEncoder
from keras_hub.src.layers.modeling.transformer_layer_utils import merge_padding_and_attention_mask

from tfsft.keras_internals import producing_layer, times_called_in_graphs

log = logging.getLogger(__name__)

FIRST_TOKEN_POOLINGS = ("cls", "pooled")

# The attention sublayer's dropout is swapped for the duration of one call (FirstTokenTransformerEncoder): calls from
# several threads (eager use of one model) take turns, so that none of them captures another's swap as the original.
_ATTENTION_DROPOUT_SWAP = threading.RLock()

# The sublayers `FirstTokenTransformerEncoder.call` runs, as TransformerEncoder names them (keras-hub 0.32).
ENCODER_SUBLAYERS = (
    "_self_attention_layer",
    "_self_attention_dropout",
    "_self_attention_layer_norm",
    "_feedforward_intermediate_dense",
    "_feedforward_output_dense",
    "_feedforward_dropout",
    "_feedforward_layer_norm",
)


@keras.saving.register_keras_serializable(package="tfsft")
class FirstTokenTransformerEncoder(TransformerEncoder):
    """KerasHub's TransformerEncoder, returning only position 0: `[batch, 1, hidden]`.

    Position 0 attends to every (unmasked) position as in the full layer; the other positions' attention outputs,
    feed-forward blocks and layer norms are not computed."""

    def call(self, inputs, padding_mask=None, attention_mask=None, training=None, return_attention_scores=False):
        if return_attention_scores:  # attention maps are asked for all positions: the full layer
            return super().call(inputs, padding_mask, attention_mask, training, return_attention_scores)
        mask = merge_padding_and_attention_mask(inputs, padding_mask, attention_mask)  # [B, 1 or L, L] or None
        if mask is not None:
            mask = mask[:, :1, :]
        residual = inputs[:, :1, :]
        length = tf.shape(inputs)[1]
        x = self._self_attention_layer_norm(inputs) if self.normalize_first else inputs
        x = self._attention_for_first_token(x, mask, length, training)
        x = dropout_as_full_layer(self._self_attention_dropout, x, length, axis=1, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self._self_attention_layer_norm(x)
        residual = x
        if self.normalize_first:
            x = self._feedforward_layer_norm(x)
        x = self._feedforward_intermediate_dense(x)
        x = self._feedforward_output_dense(x)
        x = dropout_as_full_layer(self._feedforward_dropout, x, length, axis=1, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self._feedforward_layer_norm(x)
        return x

    def _attention_for_first_token(self, x, mask, length, training):
        """The attention sublayer for query position 0, its dropout on the attention probabilities drawn as the
        full layer draws it (the sublayer calls its `_dropout_layer` itself: swapped for the call, then restored;
        `object.__setattr__` keeps the swap out of Keras's and TensorFlow's attribute tracking)."""
        attention = self._self_attention_layer
        with _ATTENTION_DROPOUT_SWAP:
            dropout = attention._dropout_layer

            def first_query_dropout(scores, training=None):  # scores: [batch, heads, 1 query, keys]
                return dropout_as_full_layer(dropout, scores, length, axis=2, training=training)

            object.__setattr__(attention, "_dropout_layer", first_query_dropout)
            try:
                return attention(query=x[:, :1, :], value=x, attention_mask=mask, training=training)
            finally:
                object.__setattr__(attention, "_dropout_layer", dropout)


def dropout_as_full_layer(dropout: keras.layers.Dropout, x, length, axis: int, training):
    """`dropout` on `x`, which holds position 0 of `length` positions along `axis`, with the mask the full layer
    applies at position 0. A mask drawn for the shorter shape would hold other random numbers (the generator fills
    the tensor in order), so training would take another random path than without the shortcut; drawn for the
    full shape from the same generator step, it is the full layer's mask. Costs one elementwise pass over the full
    shape, no matmul."""
    if not training or dropout.rate == 0:
        return dropout(x, training=training)
    padding = [[0, 0]] * len(x.shape)
    padding[axis] = [0, length - 1]
    full = dropout(tf.pad(x, padding), training=training)
    return full[(slice(None),) * axis + (slice(0, 1),)]


# Keras's weight files (`model.keras`, `*.weights.h5`) file each layer of a list under its class's name: with
# TransformerEncoder's name, a file written by either class loads into the other (a loaded model is plain).
FirstTokenTransformerEncoder.__name__ = TransformerEncoder.__name__


def last_encoder_if_first_token_suffices(backbone: Any) -> tuple[Any, str]:
    """(the encoder layer whose output is `sequence_output`, "") when only token 0 of it is ever read downstream
    of the backbone's own graph; (None, why not) otherwise."""
    import keras_hub

    if not isinstance(backbone, keras_hub.models.Backbone):
        return None, "the backbone is not a KerasHub backbone"
    outputs = backbone.output
    if not (isinstance(outputs, dict) and "sequence_output" in outputs):
        return None, "the backbone has no sequence_output"
    layer = producing_layer(outputs["sequence_output"])
    if isinstance(layer, FirstTokenTransformerEncoder):
        return layer, ""
    if layer is None or type(layer) is not TransformerEncoder:
        return None, f"its sequence_output comes from {type(layer).__name__}, not a plain TransformerEncoder"
    if times_called_in_graphs(layer) != 1:
        return None, f"{layer.name} is shared by several positions of the stack"
    if "pooled_output" in outputs and getattr(backbone, "cls_token_index", None) != 0:
        return None, "its pooler may read a token other than the first"
    return layer, ""


def compute_first_token_only(backbone: Any, pooling: str) -> bool:
    """Make the backbone's last encoder layer compute only token 0 when `pooling` reads nothing else and the
    backbone's structure allows it (see the module docstring); logged either way. True when applied."""
    if pooling not in FIRST_TOKEN_POOLINGS:
        log.info("auto: last encoder layer computes every token: model.head.pooling %s reads every token", pooling)
        return False
    layer, why_not = last_encoder_if_first_token_suffices(backbone)
    if layer is None:
        log.info("auto: last encoder layer computes every token: model.head.pooling %s, but %s", pooling, why_not)
        return False
    if not isinstance(layer, FirstTokenTransformerEncoder):
        layer.__class__ = FirstTokenTransformerEncoder  # same object: weights, name and tracking unchanged
        log.info(
            "auto: %s computes the first token only: model.head.pooling %s reads nothing else from it",
            layer.name,
            pooling,
        )
    return True


def apply_to_model(model: keras.Model, pooling: str) -> None:
    """The same shortcut on a whole text model, e.g. one loaded from `model.keras` (KerasHub rebuilds the backbone
    from its config, with plain encoder layers): on its KerasHub backbone, if it has exactly one."""
    import keras_hub

    backbones = [layer for layer in model.layers if isinstance(layer, keras_hub.models.Backbone)]
    if len(backbones) == 1:
        compute_first_token_only(backbones[0], pooling)
