"""Monitoring and persistence during `fit`, one callback per concern: resumable checkpoints, the epoch history,
best weights, early stopping, the overfitting warning, the NaN guard, learning-rate and freezing-stage scalars.

Early-stopping state is not kept in the callback: it is derived from the epoch history saved in the
run directory, so it survives a crash and a resume exactly.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfsft.config import EarlyStoppingConfig, TrainingConfig
from tfsft.keras_internals import save_weights_without_optimizer
from tfsft.learning_rate import get_lr
from tfsft.metric_direction import resolve_direction

log = logging.getLogger(__name__)


class TrainingState:
    """The epoch history (`history.json`), from which best epoch and early-stopping counters follow."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.epochs: list[dict] = json.loads(self.path.read_text()) if self.path.exists() else []
        self.diverged = False  # set by NanGuard: the loss became NaN/Inf, nothing after it is recorded

    def truncate(self, epochs_done: int) -> None:
        self.epochs = self.epochs[:epochs_done]
        self.save()

    def append(self, logs: dict) -> None:
        self.epochs.append({k: float(v) for k, v in logs.items()})
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.epochs, indent=1))
        tmp.replace(self.path)

    def best(self, monitor: str, mode: str, min_delta: float = 0.0) -> tuple[int | None, float | None]:
        """Index and value of the best epoch; later epochs must beat it by `min_delta` to count."""
        best_index, best_value = None, None
        for i, logs in enumerate(self.epochs):
            value = logs.get(monitor)
            if value is None or not math.isfinite(value):
                continue
            if best_value is None or (
                value < best_value - min_delta if mode == "min" else value > best_value + min_delta
            ):
                best_index, best_value = i, value
        return best_index, best_value


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer (+ epoch) with `tf.train.Checkpoint` at each epoch end and every N steps."""

    def __init__(self, directory: Path, every_steps: int | None = None, restore_from: Path | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.restore_from = Path(restore_from) if restore_from else self.directory
        self.every_steps = every_steps
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        # Set by attach(model): the model's optimizer exists only once the trainer has compiled it.
        self.checkpoint: tf.train.Checkpoint | None = None
        self.manager: tf.train.CheckpointManager | None = None
        self._last_step_save = -1

    def attach(self, model: keras.Model) -> None:
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epochs_done=self.epoch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep=1)

    def restore(self) -> tuple[int, int] | None:
        """Restore the latest checkpoint; returns (epochs done, optimizer steps done) or None."""
        if self.manager is None or self.checkpoint is None:
            return None
        latest = tf.train.latest_checkpoint(str(self.restore_from))
        if not latest:
            return None
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.epoch.numpy()), int(self.model_optimizer_steps())

    def model_optimizer_steps(self) -> int:
        assert self.checkpoint is not None, "attach(model) first"
        return int(self.checkpoint.optimizer.iterations.numpy())

    def save(self) -> None:
        assert self.manager is not None, "attach(model) first"
        self.manager.save(checkpoint_number=self.model_optimizer_steps())

    def on_train_batch_end(self, batch, logs=None):
        if not self.every_steps:
            return
        step = self.model_optimizer_steps()
        if step // self.every_steps > self._last_step_save:
            if self._last_step_save >= 0:
                self.save()
            self._last_step_save = step // self.every_steps

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.save()


# ----------------------------------------------------------------------------------------- one callback per concern
# They share two explicit objects, no callback knows another: the `TrainingState` (epoch history, plus whether the
# loss diverged) and the `FreezePlan` (its current stage). `Monitors` puts them in the order they rely on.
@dataclass(frozen=True)
class MonitoredMetric:
    """The metric best weights and early stopping follow, and whether lower or higher is better.

    Without a validation split `val_x` falls back to `x` (tfsft/config_checks.py warns about it)."""

    name: str
    mode: str
    min_delta: float = 0.0

    @classmethod
    def from_config(cls, early: EarlyStoppingConfig, has_validation: bool) -> MonitoredMetric:
        name = early.monitor if has_validation or not early.monitor.startswith("val_") else early.monitor[len("val_") :]
        return cls(name, resolve_direction(name, early.mode), early.min_delta)

    def best(self, state: TrainingState) -> tuple[int | None, float | None]:
        return state.best(self.name, self.mode, self.min_delta)


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and marks the state diverged (the epoch is not recorded)."""

    def __init__(self, state: TrainingState):
        super().__init__()
        self.state = state

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(float(loss)):
            return
        self.state.diverged = True
        self.model.stop_training = True
        message = (
            f"Loss became {float(loss)} at step {int(self.model.optimizer.iterations.numpy())}; "
            f"training stopped, the best checkpoint so far is kept."
        )
        log.error(message)
        print(message, flush=True)


class EpochHistory(keras.callbacks.Callback):
    """Appends each epoch's logs, with the learning rate and the freezing stage, to `history.json`."""

    def __init__(self, state: TrainingState, plan):
        super().__init__()
        self.state, self.plan = state, plan

    def on_epoch_end(self, epoch, logs=None):
        if self.state.diverged:
            return
        logs = dict(logs or {})  # a copy: the CSV and TensorBoard loggers keep Keras's own columns
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(get_lr(self.model.optimizer)))
        logs["freezing_stage"] = float(self.plan.current_index or 0)
        self.state.append(logs)


class BestWeights(keras.callbacks.Callback):
    """Saves the weights whenever the epoch just recorded is the best so far (chief only: `write`)."""

    def __init__(self, state: TrainingState, metric: MonitoredMetric, path: Path, write: bool = True):
        super().__init__()
        self.state, self.metric, self.path, self.write = state, metric, Path(path), write

    def on_epoch_end(self, epoch, logs=None):
        if self.state.diverged or not self.write:
            return
        best_index, best_value = self.metric.best(self.state)
        if best_index == len(self.state.epochs) - 1:
            save_weights_without_optimizer(self.model, self.path)  # training resumes from checkpoints/last
            log.info("New best %s=%.5f at epoch %d -> %s", self.metric.name, best_value, epoch + 1, self.path)


class EarlyStopping(keras.callbacks.Callback):
    """Stops when the monitored metric has not improved for more than `patience` epochs of the history (so a
    resumed run that had already stopped does not train again: `should_stop` before `fit`)."""

    def __init__(self, state: TrainingState, metric: MonitoredMetric, early: EarlyStoppingConfig):
        super().__init__()
        self.state, self.metric, self.early = state, metric, early

    def waited(self) -> tuple[int, int | None, float | None]:
        """(epochs since the best one, best index, best value)."""
        best_index, best_value = self.metric.best(self.state)
        waited = len(self.state.epochs) - 1 - best_index if best_index is not None else 0
        return waited, best_index, best_value

    def should_stop(self) -> bool:
        return self.early.enabled and self.waited()[0] > self.early.patience

    def on_epoch_end(self, epoch, logs=None):
        if self.state.diverged or not self.should_stop():
            return
        waited, best_index, best_value = self.waited()
        self.model.stop_training = True
        print(
            f"Early stopping at epoch {epoch + 1}: {self.metric.name} has not improved for {waited} epochs "
            f"(best {best_value:.5f} at epoch {best_index + 1}).",
            flush=True,
        )


class OverfittingWarning(keras.callbacks.Callback):
    """Warns (log, stdout, TensorBoard text, the report) when validation loss rose for `patience` epochs in a row
    while training loss fell."""

    def __init__(self, state: TrainingState, patience: int, log_dir: Path, write: bool = True):
        super().__init__()
        self.state, self.patience = state, patience
        self.log_dir, self.write = Path(log_dir), write
        self.warnings: list[str] = []

    def on_epoch_end(self, epoch, logs=None):
        k, history = self.patience, self.state.epochs
        if self.state.diverged or len(history) < k + 1 or "val_loss" not in history[-1]:
            return
        recent = history[-(k + 1) :]
        val_rising = all(b["val_loss"] > a["val_loss"] for a, b in zip(recent, recent[1:]))
        train_falling = all(b["loss"] < a["loss"] for a, b in zip(recent, recent[1:]))
        if not (val_rising and train_falling):
            return
        message = (
            f"Overfitting warning at epoch {epoch + 1}: validation loss rose for {k} epochs "
            f"({recent[0]['val_loss']:.4f} -> {recent[-1]['val_loss']:.4f}) while training loss fell. "
            f"Consider more regularization, a lower learning rate, freezing more, or early stopping."
        )
        self.warnings.append(message)
        log.warning(message)
        print(message, flush=True)
        if self.write:
            with tf.summary.create_file_writer(str(self.log_dir / "schedule")).as_default(step=epoch):
                tf.summary.text("overfitting_warning", message)


class ScheduleScalars(keras.callbacks.Callback):
    """The learning rate (tfsft.learning_rate.get_lr) and the freezing stage index to TensorBoard (`logs/schedule`):
    every `every` steps and at each epoch end."""

    def __init__(self, state: TrainingState, plan, log_dir: Path, every: int = 10, write: bool = True):
        super().__init__()
        self.state, self.plan, self.every = state, plan, every
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "schedule")) if write else None

    def _write(self, step: int, prefix: str = "") -> None:
        assert self.writer is not None  # the callers check `write`
        with self.writer.as_default(step=step):
            tf.summary.scalar(f"{prefix}learning_rate", float(keras.ops.convert_to_numpy(get_lr(self.model.optimizer))))
            tf.summary.scalar(f"{prefix}freezing_stage", self.plan.current_index or 0)

    def on_train_batch_end(self, batch, logs=None):
        if self.writer is None or self.state.diverged:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every == 0:
            self._write(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.writer is not None and not self.state.diverged:
            self._write(epoch, prefix="epoch_")


@dataclass
class Monitors:
    """The monitoring callbacks of one run, in the order they rely on: the NaN guard first (it marks the state
    before anything records), the history before best weights, early stopping and the overfitting warning read it."""

    metric: MonitoredMetric
    nan_guard: NanGuard
    history: EpochHistory
    best_weights: BestWeights
    overfitting: OverfittingWarning
    schedule_scalars: ScheduleScalars
    early_stopping: EarlyStopping

    @classmethod
    def build(
        cls,
        training: TrainingConfig,
        state: TrainingState,
        plan,
        best_weights: Path,
        log_dir: Path,
        has_validation: bool,
        write: bool = True,
    ) -> Monitors:
        metric = MonitoredMetric.from_config(training.early_stopping, has_validation)
        return cls(
            metric,
            NanGuard(state),
            EpochHistory(state, plan),
            BestWeights(state, metric, best_weights, write=write),
            OverfittingWarning(state, training.overfit_patience, log_dir, write=write),
            ScheduleScalars(state, plan, log_dir, write=write),
            EarlyStopping(state, metric, training.early_stopping),
        )

    def callbacks(self) -> list:
        return [
            self.nan_guard,
            self.history,
            self.best_weights,
            self.overfitting,
            self.schedule_scalars,
            self.early_stopping,
        ]
