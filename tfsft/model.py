"""Backbone + head, and what it trains with (the task type's loss and metrics, class weights).

The Keras model outputs logits (classification, multilabel) or values (regression); the task type
(`tfsft.task_types`) turns them into scores. Heads compute in float32 even under a mixed-precision policy.
"""

from __future__ import annotations

import keras
import numpy as np

from tfsft.backbones import is_pretrained
from tfsft.config import RunConfig
from tfsft.dropout_gradient import use_closed_form_dropout_gradients
from tfsft.freezing import FreezePlan
from tfsft.layer_norm import use_closed_form_gradients
from tfsft.modalities.base import Modality
from tfsft.softmax_gradient import use_closed_form_softmax_gradients
from tfsft.task_types import task_type


def build_model(config: RunConfig, modality: Modality, backbone: keras.Model, num_outputs: int) -> keras.Model:
    inputs = modality.model_inputs()
    x = modality.features(backbone, inputs)
    head = config.model.head
    for i, units in enumerate(head.hidden_units):
        x = keras.layers.Dense(units, activation="gelu", name=f"head_hidden_{i}")(x)
        if head.dropout:
            x = keras.layers.Dropout(head.dropout, name=f"head_hidden_dropout_{i}")(x)
    if head.dropout:
        x = keras.layers.Dropout(head.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_outputs, dtype="float32", name="head_logits")(x)
    return keras.Model(inputs, outputs, name=f"{config.name}_model")


def loss_for(config: RunConfig) -> keras.losses.Loss:
    return task_type(config).loss(config.training.label_smoothing)


def metrics_for(config: RunConfig, num_outputs: int) -> list:
    return task_type(config).metrics(num_outputs)


def class_weight_map(config: RunConfig, targets: np.ndarray, class_names: list[str]):
    """Keras `class_weight` from the config: none, balanced (inverse frequency) or an explicit mapping."""
    setting = config.training.class_weights
    if not task_type(config).single_label or setting == "none":
        return None
    if setting == "balanced":
        counts = targets.sum(axis=0)
        return {i: float(len(targets) / (len(counts) * max(c, 1.0))) for i, c in enumerate(counts)}
    unknown = sorted(set(setting) - set(class_names))
    if unknown:
        from tfsft.errors import ConfigError

        raise ConfigError(f"training.class_weights names unknown classes {unknown}; the classes are {class_names}.")
    return {i: float(setting.get(name, 1.0)) for i, name in enumerate(class_names)}


def build_model_and_plan(
    config: RunConfig, modality: Modality, num_outputs: int
) -> tuple[keras.Model, keras.Model, FreezePlan]:
    """(backbone, model, its FreezePlan): what training and the LR range test both build, inside the caller's
    strategy scope. The plan's units come from the freshly loaded backbone (pretrained or not decides BatchNorm)."""
    backbone = modality.backbone()
    model = build_model(config, modality, backbone, num_outputs)
    use_closed_form_gradients(model)
    use_closed_form_dropout_gradients(model)
    use_closed_form_softmax_gradients(model)
    plan = FreezePlan(
        config.freeze,
        backbone,
        modality.unused_backbone_layers(backbone),
        pretrained=is_pretrained(config.model.backbone),
    )
    return backbone, model, plan
