"""What each `task.type` means, in one place: loss, compiled metrics, output activation, export outputs, report.

The Keras model always ends in raw outputs: logits (classification, multilabel) or values (regression). A
`TaskType` says how to train them (loss, metrics), how to turn them into scores (`activation`, the one formula
used by evaluation, calibration and the SavedModel graph alike), what an exported model answers (output names),
and what evaluation reports (metrics, per-example loss, worst-example columns, calibration).

To add a task type: subclass `TaskType`, implement its abstract methods, add an instance to `TASK_TYPES` and the
name to `task.type` in config.py (data.py parses its labels into targets).

No TensorFlow or Keras at import time (config validation and reporting import this module): Keras is imported
inside `loss`/`metrics`, TensorFlow inside `serving_outputs`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tfsft.config import RunConfig

EPS = 1e-7


def finite_or_none(value) -> float | None:
    # NaN/inf are not valid JSON; None is, and reads as "undefined" in metrics.json and the report.
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ArrayOps:
    """The few array functions `TaskType.activate` needs, so that one formula runs on numpy and in a TF graph."""

    exp: Callable
    max: Callable  # (x, axis, keepdims)
    sum: Callable  # (x, axis, keepdims)


NUMPY_OPS = ArrayOps(exp=np.exp, max=np.max, sum=np.sum)


def tensorflow_ops() -> ArrayOps:
    import tensorflow as tf

    return ArrayOps(exp=tf.exp, max=tf.reduce_max, sum=tf.reduce_sum)


class TaskType(ABC):
    """One value of `task.type`. Instances are stateless; look them up with `task_type(config)`."""

    name: str
    # True when each example has exactly one class (softmax over classes, class weights, class folders,
    # stratified splits).
    single_label: bool = False
    # False when there are no classes: one target column, no classes.json entries (regression).
    has_classes: bool = True
    # The metrics `metrics()` compiles, in order (history.json logs them; config checks monitor names against them).
    metric_names: tuple[str, ...]
    # The two evaluation metrics printed after a run and by `tfsft.evaluate`.
    headline: tuple[str, str]
    # The SavedModel output holding `activate(logits)`; the ONNX model's one output (it holds the raw outputs).
    score_output: str
    onnx_output: str = "logits"

    # ------------------------------------------------------------------------------------- data
    @abstractmethod
    def parse_label(self, raw: object, separator: str) -> Any:
        """A raw label from a table cell -> the record's label; None when it is empty or invalid."""

    # ------------------------------------------------------------------------------------- training
    @abstractmethod
    def loss(self, label_smoothing: float) -> Any:
        """The Keras loss on the model's raw outputs."""

    @abstractmethod
    def metrics(self, num_outputs: int) -> list:
        """Fresh Keras metrics on the raw outputs, named `metric_names`."""

    # ------------------------------------------------------------------------------------- outputs
    @abstractmethod
    def activate(self, outputs: Any, ops: ArrayOps) -> Any:
        """Raw outputs -> scores (probabilities, or values), with `ops` (numpy or TensorFlow)."""

    def activation(self, outputs: np.ndarray) -> np.ndarray:
        """Raw outputs -> scores, in float64 numpy (evaluation, calibration, export verification)."""
        return self.activate(np.asarray(outputs, dtype=np.float64), NUMPY_OPS)

    @abstractmethod
    def serving_outputs(
        self, logits: Any, class_names: list[str], threshold: float, separator: str, top_k: int
    ) -> dict[str, Any]:
        """The named outputs of the exported SavedModel's signatures, from float32 raw outputs (in graph)."""

    @abstractmethod
    def onnx_output_meaning(self, threshold: float) -> str:
        """What the ONNX model's output means, for preprocessing.json."""

    # ------------------------------------------------------------------------------------- report
    @abstractmethod
    def report_metrics(self, y_true: np.ndarray, scores: np.ndarray, class_names: list[str], threshold: float) -> dict:
        """JSON-serializable metrics of float64 targets and scores (metrics.json, report.md)."""

    @abstractmethod
    def example_losses(self, y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Per-example loss of scores against targets: what ranks the worst examples."""

    @abstractmethod
    def example_columns(self, y_true: np.ndarray, scores: np.ndarray, class_names: list[str]) -> dict:
        """The true and predicted columns of one worst example's row."""

    # ------------------------------------------------------------------------------------- calibration
    # Temperature scaling fits one temperature (classification) or one per label (multilabel); regression has
    # no probabilities to calibrate (config validation refuses it).
    per_label_temperature: bool = False
    reliability_axes: tuple[str, str] = ("confidence", "accuracy")

    def nll(self, logits: np.ndarray, targets: np.ndarray) -> float:
        """Mean negative log-likelihood of float64 targets under float64 (already temperature-scaled) logits."""
        raise NotImplementedError(f"task.type {self.name} has no likelihood to calibrate")

    def confidence_and_outcome(self, probabilities: np.ndarray, targets: np.ndarray) -> tuple:
        """(confidence, 1.0 where that confidence was right) per scored item, for ECE and reliability plots."""
        raise NotImplementedError(f"task.type {self.name} has no probabilities to calibrate")


class Classification(TaskType):
    name = "classification"
    single_label = True
    metric_names = ("accuracy", "macro_f1")
    headline = ("accuracy", "macro_f1")
    score_output = "probabilities"

    def parse_label(self, raw: object, separator: str) -> str | None:
        text = str(raw).strip()
        return text or None

    def loss(self, label_smoothing: float) -> Any:
        import keras

        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)

    def metrics(self, num_outputs: int) -> list:
        import keras

        from tfsft.keras_internals import build_f_score

        return [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            build_f_score(keras.metrics.F1Score(average="macro", name="macro_f1"), num_outputs),
        ]

    def activate(self, outputs: Any, ops: ArrayOps) -> Any:  # softmax
        exp = ops.exp(outputs - ops.max(outputs, axis=-1, keepdims=True))
        return exp / ops.sum(exp, axis=-1, keepdims=True)

    def serving_outputs(
        self, logits: Any, class_names: list[str], threshold: float, separator: str, top_k: int
    ) -> dict[str, Any]:
        import tensorflow as tf

        names = tf.constant(class_names)
        probabilities = self.activate(logits, tensorflow_ops())
        class_id = tf.argmax(probabilities, axis=-1)
        top_probabilities, top_ids = tf.math.top_k(probabilities, k=min(top_k, len(class_names)))
        return {
            self.score_output: probabilities,
            "class_id": class_id,
            "class_name": tf.gather(names, class_id),
            "top_k_class_names": tf.gather(names, top_ids),
            "top_k_probabilities": top_probabilities,
        }

    def onnx_output_meaning(self, threshold: float) -> str:
        return "logits, one per class in classes.json order; softmax gives probabilities"

    def report_metrics(self, y_true: np.ndarray, scores: np.ndarray, class_names: list[str], threshold: float) -> dict:
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

        _f = finite_or_none
        # Explicit labels keep every class in the tables even when a small test split lacks some of them.
        labels = list(range(len(class_names)))
        true, pred = y_true.argmax(axis=-1), scores.argmax(axis=-1)
        out = {"num_examples": int(len(true)), "class_names": list(class_names), "accuracy": _f(np.mean(true == pred))}
        for average in ("macro", "weighted"):
            p, r, f, _ = precision_recall_fscore_support(true, pred, labels=labels, average=average, zero_division=0)
            out.update({f"{average}_precision": _f(p), f"{average}_recall": _f(r), f"{average}_f1": _f(f)})
        out["per_class"] = _per_class(
            class_names, *precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
        )
        out["confusion_matrix"] = confusion_matrix(true, pred, labels=labels).tolist()
        # Cross entropy against the full target row, so soft (MixUp-style) targets are scored correctly too.
        out["log_loss"] = _f(self.example_losses(y_true, scores).mean())
        if len(class_names) > 2:  # with two classes top-2 accuracy is trivially 1
            out["top_2_accuracy"] = _f(top_k_accuracy_score(true, scores, k=2, labels=labels))
        return out

    def example_losses(self, y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return -np.sum(y_true * np.log(np.clip(scores, EPS, 1.0)), axis=-1)

    def example_columns(self, y_true: np.ndarray, scores: np.ndarray, class_names: list[str]) -> dict:
        predicted = int(scores.argmax())
        return {
            "true": class_names[int(y_true.argmax())],
            "predicted": class_names[predicted],
            "confidence": round(float(scores[predicted]), 6),
        }

    def nll(self, logits: np.ndarray, targets: np.ndarray) -> float:
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return float(-np.mean(np.sum(targets * log_probs, axis=-1)))

    def confidence_and_outcome(self, probabilities: np.ndarray, targets: np.ndarray) -> tuple:
        predicted = probabilities.argmax(axis=-1)
        return probabilities.max(axis=-1), (targets.argmax(axis=-1) == predicted).astype(np.float64)


class Multilabel(TaskType):
    name = "multilabel"
    metric_names = ("accuracy", "auc")
    headline = ("subset_accuracy", "macro_f1")
    score_output = "scores"
    per_label_temperature = True
    reliability_axes = ("predicted probability", "observed frequency")

    def parse_label(self, raw: object, separator: str) -> list[str] | None:
        parts = raw if isinstance(raw, list) else str(raw).split(separator)
        labels = sorted({str(p).strip() for p in parts if str(p).strip()})
        return labels or None

    def loss(self, label_smoothing: float) -> Any:
        import keras

        return keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)

    def metrics(self, num_outputs: int) -> list:
        import keras

        return [
            keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy"),
            keras.metrics.AUC(multi_label=True, num_labels=num_outputs, from_logits=True, name="auc"),
        ]

    def activate(self, outputs: Any, ops: ArrayOps) -> Any:  # sigmoid, per label
        return 1.0 / (1.0 + ops.exp(-outputs))

    def serving_outputs(
        self, logits: Any, class_names: list[str], threshold: float, separator: str, top_k: int
    ) -> dict[str, Any]:
        import tensorflow as tf

        scores = self.activate(logits, tensorflow_ops())
        predicted = scores >= threshold
        chosen = tf.where(predicted, tf.broadcast_to(tf.constant(class_names), tf.shape(scores)), tf.constant(""))
        joined = tf.strings.reduce_join(chosen, axis=-1, separator=separator)
        # Collapse the separators left by unselected ("") classes.
        joined = tf.strings.regex_replace(joined, f"(\\{separator})+", separator)
        joined = tf.strings.regex_replace(joined, f"^\\{separator}|\\{separator}$", "")
        return {self.score_output: scores, "predicted": tf.cast(predicted, tf.int32), "labels": joined}

    def onnx_output_meaning(self, threshold: float) -> str:
        return f"logits, one per class in classes.json order; sigmoid >= {threshold} marks a label"

    def report_metrics(self, y_true: np.ndarray, scores: np.ndarray, class_names: list[str], threshold: float) -> dict:
        from sklearn.metrics import hamming_loss, precision_recall_fscore_support, roc_auc_score

        _f = finite_or_none
        truth, pred = y_true >= 0.5, scores >= threshold
        out = {
            "num_examples": int(len(truth)),
            "class_names": list(class_names),
            "threshold": float(threshold),
            "subset_accuracy": _f(np.mean(np.all(truth == pred, axis=1))),
            "hamming_loss": _f(hamming_loss(truth, pred)),
        }
        for average in ("micro", "macro"):
            p, r, f, _ = precision_recall_fscore_support(truth, pred, average=average, zero_division=0)
            out.update({f"{average}_precision": _f(p), f"{average}_recall": _f(r), f"{average}_f1": _f(f)})
        out["per_class"] = _per_class(class_names, *precision_recall_fscore_support(truth, pred, zero_division=0))
        # AUC is undefined for a label that is all-positive or all-negative in this split; skip, don't fail.
        scorable = [i for i in range(truth.shape[1]) if 0 < truth[:, i].sum() < len(truth)]
        out["macro_auc"] = (
            _f(np.mean([roc_auc_score(truth[:, i], scores[:, i]) for i in scorable])) if scorable else None
        )
        return out

    def example_losses(self, y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
        p = np.clip(scores, EPS, 1 - EPS)
        return -np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p), axis=-1)

    def example_columns(self, y_true: np.ndarray, scores: np.ndarray, class_names: list[str]) -> dict:
        return {"true": _names(y_true, class_names), "predicted": _names(scores, class_names)}

    def nll(self, logits: np.ndarray, targets: np.ndarray) -> float:
        # log(1 + e^-|z|) + max(z, 0) - z*y: the numerically stable binary cross-entropy, averaged over labels.
        return float(np.mean(np.logaddexp(0.0, -np.abs(logits)) + np.maximum(logits, 0.0) - logits * targets))

    def confidence_and_outcome(self, probabilities: np.ndarray, targets: np.ndarray) -> tuple:
        return probabilities.reshape(-1), targets.reshape(-1)


class Regression(TaskType):
    name = "regression"
    metric_names = ("mae", "rmse")
    headline = ("mae", "rmse")
    score_output = "value"
    onnx_output = "value"
    has_classes = False

    def parse_label(self, raw: object, separator: str) -> float | None:
        try:
            value = float(raw)  # type: ignore[arg-type]  # anything float() refuses is an invalid label
        except (TypeError, ValueError):
            return None
        return value if np.isfinite(value) else None

    def loss(self, label_smoothing: float) -> Any:
        import keras

        return keras.losses.MeanSquaredError()

    def metrics(self, num_outputs: int) -> list:
        import keras

        return [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.RootMeanSquaredError(name="rmse")]

    def activate(self, outputs: Any, ops: ArrayOps) -> Any:
        return outputs  # the value itself

    def serving_outputs(
        self, logits: Any, class_names: list[str], threshold: float, separator: str, top_k: int
    ) -> dict[str, Any]:
        return {self.score_output: self.activate(logits, tensorflow_ops())[:, 0]}

    def onnx_output_meaning(self, threshold: float) -> str:
        return "the predicted value (one column)"

    def report_metrics(self, y_true: np.ndarray, scores: np.ndarray, class_names: list[str], threshold: float) -> dict:
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

        _f = finite_or_none
        y_true, y_pred = y_true.reshape(-1), scores.reshape(-1)
        mse = mean_squared_error(y_true, y_pred)
        constant = np.std(y_true) == 0 or np.std(y_pred) == 0  # correlation is undefined, not zero
        return {
            "num_examples": int(len(y_true)),
            "mae": _f(mean_absolute_error(y_true, y_pred)),
            "mse": _f(mse),
            "rmse": _f(math.sqrt(mse)),
            "r2": _f(r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
            "pearson": None if constant else _f(np.corrcoef(y_true, y_pred)[0, 1]),
        }

    def example_losses(self, y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return np.abs(y_true.reshape(-1) - scores.reshape(-1))

    def example_columns(self, y_true: np.ndarray, scores: np.ndarray, class_names: list[str]) -> dict:
        return {"true": float(y_true.reshape(-1)[0]), "predicted": float(scores.reshape(-1)[0])}


def _per_class(names, precision, recall, f1, support) -> dict:
    _f = finite_or_none
    return {
        name: {"precision": _f(p), "recall": _f(r), "f1": _f(f), "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, support)
    }


def _names(row: np.ndarray, names: list[str], threshold: float = 0.5) -> str:
    return "|".join(name for name, value in zip(names, row) if value >= threshold)


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (Classification(), Multilabel(), Regression())}


def task_type(config_or_name: RunConfig | str) -> TaskType:
    """The `TaskType` of a run's config (its task.type), or of a task.type name."""
    name = config_or_name if isinstance(config_or_name, str) else config_or_name.task.type
    if name not in TASK_TYPES:
        raise ValueError(f"unknown task type {name!r}; expected one of {tuple(TASK_TYPES)}")
    return TASK_TYPES[name]
