"""Pretrained anchors: fine-tuning that stays near what the backbone learned in pre-training.

`l2sp` (Li et al., 2018): alpha/2 * ||w - w0||^2 over the trainable backbone weights, where w0 are the
weights the backbone had when it was built from its pretrained source, plus beta/2 * ||w||^2 over the
new head. `features` (DELTA-style, Li et al., 2019): alpha/2 * mean over the batch of ||f - f0||^2
between the pooled features of the fine-tuned backbone and those of a frozen copy of the pretrained
backbone on the same batch, plus the same beta term on the head.

The anchor is captured when the model is built, before any checkpoint is restored: a resumed run rebuilds
the backbone from its pretrained source (or, for a randomly initialised backbone, from the seed), so the
anchor is always the original, never the weights of a checkpoint. w0 lives in plain tensors and the
frozen copy in a model that nothing tracks: neither reaches a checkpoint, the optimizer or an export.

The penalty enters the loss through the model's `compute_loss` (training steps only, so `val_loss` stays
comparable with plain fine-tuning) and sums over the variables trainable when the train step is traced:
frozen variables cost nothing and each freezing stage re-traces. It is scaled for distribution like
Keras scales the compiled loss, so a MirroredStrategy run takes the same steps as one device.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import keras
import tensorflow as tf
from keras import ops

from tfsft.config import PretrainedAnchorConfig
from tfsft.keras_internals import scale_loss_for_distribution

if TYPE_CHECKING:
    from tfsft.modalities.base import Modality

log = logging.getLogger(__name__)

HEAD_INPUT_LAYERS = ("head_hidden_0", "head_dropout", "head_logits")  # the first head layer build_model adds


class PretrainedAnchor:
    """The anchor of one run: reference weights or a frozen feature extractor, the penalty, and its metric."""

    def __init__(self, cfg: PretrainedAnchorConfig, model: keras.Model, backbone: keras.Model, modality: Modality):
        self.cfg = cfg
        self.model = model
        self.backbone = backbone
        backbone_ids = {id(w) for w in backbone.weights}
        self.head_variables = [w for w in model.weights if id(w) not in backbone_ids and w.trainable]
        self.reference: dict[int, tf.Tensor] = {}
        self.features = self.frozen_features = None
        if cfg.kind == "l2sp" and cfg.alpha:
            # Constants, not variables: nothing tracks them, so checkpoints and exports never hold a copy.
            self.reference = {id(w): tf.constant(w.numpy()) for w in backbone.trainable_weights}
        elif cfg.kind == "features" and cfg.alpha:
            self.features, self.frozen_features = _feature_models(model, backbone, modality)
        self.tracker = keras.metrics.Mean(name="loss_anchor")

    @property
    def anchored_variables(self) -> list:
        """Variables whose pull toward zero (weight decay) the anchor replaces."""
        anchored = list(self.backbone.trainable_weights) if self.cfg.alpha else []
        return anchored + (self.head_variables if self.cfg.beta else [])

    def describe(self) -> str:
        cfg = self.cfg
        if cfg.kind == "l2sp":
            what = f"L2-SP: alpha/2*||w - w0||^2 over {len(self.reference)} backbone variables (alpha={cfg.alpha})"
        else:
            what = (
                f"feature anchor: alpha/2*mean||f - f0||^2 on pooled features (alpha={cfg.alpha}); costs a "
                f"second forward pass of a frozen pretrained backbone copy (and of the fine-tuned backbone) "
                f"per training step"
            )
        head = f", beta/2*||w||^2 over {len(self.head_variables)} head variables (beta={cfg.beta})" if cfg.beta else ""
        return f"Pretrained anchor: {what}{head}. Weight decay toward zero is off for the anchored variables."

    def penalty(self, x):
        """The anchor term for one batch, from the variables trainable now; None when nothing is anchored."""
        trainable = {id(w) for w in self.model.trainable_variables}
        terms = []
        if self.reference:
            for w in self.backbone.trainable_variables:
                if id(w) in self.reference:
                    diff = ops.cast(w, "float32") - self.reference[id(w)]
                    terms.append(0.5 * self.cfg.alpha * ops.sum(ops.square(diff)))
        if self.features is not None and any(id(w) in trainable for w in self.backbone.weights):
            tuned = ops.cast(self.features(x, training=True), "float32")
            original = ops.stop_gradient(ops.cast(self.frozen_features(x, training=False), "float32"))
            terms.append(0.5 * self.cfg.alpha * ops.mean(ops.sum(ops.square(tuned - original), axis=-1)))
        if self.cfg.beta:
            for w in self.head_variables:
                if id(w) in trainable:
                    terms.append(0.5 * self.cfg.beta * ops.sum(ops.square(ops.cast(w, "float32"))))
        return ops.sum(ops.stack(terms)) if terms else None

    def attach(self) -> None:
        """Add the penalty to the model's training loss. The override is an instance attribute: never saved."""
        task_loss = self.model.compute_loss

        def compute_loss(x=None, y=None, y_pred=None, sample_weight=None, training=True):
            loss = task_loss(x, y, y_pred, sample_weight, training=training)
            if not training:
                return loss
            penalty = self.penalty(x)
            if penalty is None:
                return loss
            self.tracker.update_state(penalty)
            return loss + ops.cast(scale_loss_for_distribution(penalty), loss.dtype)

        self.model.compute_loss = compute_loss

    def callback(self) -> keras.callbacks.Callback:
        return AnchorLogger(self.tracker)


class AnchorLogger(keras.callbacks.Callback):
    """Puts the epoch's mean anchor term into the logs as `loss_anchor` (history, CSV, TensorBoard, report).

    Must run before the callbacks that record the logs."""

    def __init__(self, tracker: keras.metrics.Metric):
        super().__init__()
        self.tracker = tracker

    def on_epoch_begin(self, epoch, logs=None):
        self.tracker.reset_state()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["loss_anchor"] = float(self.tracker.result())


def _feature_models(model: keras.Model, backbone: keras.Model, modality: Modality):
    """(fine-tuned pooled features, frozen pretrained copy's pooled features), both from the model's inputs."""
    head_input = next(
        model.get_layer(name).input for name in HEAD_INPUT_LAYERS if any(layer.name == name for layer in model.layers)
    )
    tuned = keras.Model(model.input, head_input, name="anchor_tuned_features")
    copy = type(backbone).from_config(backbone.get_config())
    copy.set_weights(backbone.get_weights())
    copy.trainable = False
    inputs = modality.model_inputs()
    frozen = keras.Model(inputs, modality.features(copy, inputs), name="anchor_pretrained_features")
    frozen.trainable = False
    return tuned, frozen


def build_anchor(
    cfg: PretrainedAnchorConfig, model: keras.Model, backbone: keras.Model, modality: Modality, optimizer
) -> PretrainedAnchor | None:
    """Call inside the strategy scope, after the backbone is built and before any checkpoint is restored."""
    if cfg.kind == "none":
        return None
    from tfsft.optim import exclude_from_weight_decay

    anchor = PretrainedAnchor(cfg, model, backbone, modality)
    anchor.attach()
    if getattr(optimizer, "weight_decay", None):
        exclude_from_weight_decay(optimizer, anchor.anchored_variables)
    log.info(anchor.describe())
    print(anchor.describe(), flush=True)
    return anchor
