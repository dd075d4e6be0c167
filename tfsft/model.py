"""Backbone + head, and what each task type trains with (loss, metrics, output activation).

The Keras model outputs logits (classification, multilabel) or values (regression); `activation`
turns them into scores. Heads compute in float32 even under a mixed-precision policy.
"""

from __future__ import annotations

import keras
import numpy as np

from tfsft.config import RunConfig


def build_model(config: RunConfig, modality, backbone: keras.Model, num_outputs: int) -> keras.Model:
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
    task = config.task.type
    smoothing = config.training.label_smoothing
    if task == "classification":
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
    if task == "multilabel":
        return keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=smoothing)
    return keras.losses.MeanSquaredError()


def metrics_for(config: RunConfig, num_outputs: int) -> list:
    task = config.task.type
    if task == "classification":
        return [keras.metrics.CategoricalAccuracy(name="accuracy"),
                keras.metrics.F1Score(average="macro", name="macro_f1")]
    if task == "multilabel":
        return [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy"),
                keras.metrics.AUC(multi_label=True, num_labels=num_outputs, from_logits=True, name="auc")]
    return [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.RootMeanSquaredError(name="rmse")]


def activation(task_type: str, outputs: np.ndarray) -> np.ndarray:
    """Logits -> probabilities (classification: softmax; multilabel: sigmoid); regression unchanged."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if task_type == "classification":
        shifted = outputs - outputs.max(axis=-1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=-1, keepdims=True)
    if task_type == "multilabel":
        return 1.0 / (1.0 + np.exp(-outputs))
    return outputs


def class_weight_map(config: RunConfig, targets: np.ndarray, class_names: list[str]):
    """Keras `class_weight` from the config: none, balanced (inverse frequency) or an explicit mapping."""
    setting = config.training.class_weights
    if config.task.type != "classification" or setting == "none":
        return None
    if setting == "balanced":
        counts = targets.sum(axis=0)
        return {i: float(len(targets) / (len(counts) * max(c, 1.0))) for i, c in enumerate(counts)}
    unknown = sorted(set(setting) - set(class_names))
    if unknown:
        from tfsft.errors import ConfigError

        raise ConfigError(f"training.class_weights names unknown classes {unknown}; the classes are {class_names}.")
    return {i: float(setting.get(name, 1.0)) for i, name in enumerate(class_names)}
