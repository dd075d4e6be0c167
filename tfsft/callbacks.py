"""Monitoring and persistence during `fit`: resumable checkpoints, best weights, early stopping,
overfitting warning, NaN guard, learning-rate and freezing-stage logging.

Early-stopping state is not kept in the callback: it is derived from the epoch history saved in the
run directory, so it survives a crash and a resume exactly.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfsft.config import EarlyStoppingConfig
from tfsft.metric_direction import resolve_direction
from tfsft.optim import unwrapped

log = logging.getLogger(__name__)


class TrainingState:
    """The epoch history (`history.json`), from which best epoch and early-stopping counters follow."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.epochs: list[dict] = json.loads(self.path.read_text()) if self.path.exists() else []

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

    def best(self, monitor: str, mode: str, min_delta: float = 0.0) -> tuple[Optional[int], Optional[float]]:
        """Index and value of the best epoch; later epochs must beat it by `min_delta` to count."""
        best_index, best_value = None, None
        for i, logs in enumerate(self.epochs):
            value = logs.get(monitor)
            if value is None or not math.isfinite(value):
                continue
            if best_value is None or (value < best_value - min_delta if mode == "min" else value > best_value + min_delta):
                best_index, best_value = i, value
        return best_index, best_value


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer (+ epoch) with `tf.train.Checkpoint` at each epoch end and every N steps."""

    def __init__(self, directory: Path, every_steps: Optional[int] = None, restore_from: Optional[Path] = None):
        super().__init__()
        self.directory = Path(directory)
        self.restore_from = Path(restore_from) if restore_from else self.directory
        self.every_steps = every_steps
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.checkpoint = None
        self.manager = None
        self._last_step_save = -1

    def attach(self, model: keras.Model) -> None:
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epochs_done=self.epoch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep=1)

    def restore(self) -> Optional[tuple[int, int]]:
        """Restore the latest checkpoint; returns (epochs done, optimizer steps done) or None."""
        if self.manager is None:
            return None
        latest = tf.train.latest_checkpoint(str(self.restore_from))
        if not latest:
            return None
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.epoch.numpy()), int(self.model_optimizer_steps())

    def model_optimizer_steps(self) -> int:
        return int(self.checkpoint.optimizer.iterations.numpy())

    def save(self) -> None:
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


class RunMonitor(keras.callbacks.Callback):
    """Best weights, early stopping, overfitting warning, NaN guard, LR/stage scalars to TensorBoard."""

    def __init__(self, state: TrainingState, best_weights: Path, early: EarlyStoppingConfig,
                 overfit_patience: int, log_dir: Path, has_validation: bool, write: bool = True,
                 lr_log_every: int = 10):
        super().__init__()
        self.state = state
        self.best_weights = Path(best_weights)
        self.early = early
        self.monitor = early.monitor if has_validation or not early.monitor.startswith("val_") \
            else early.monitor[len("val_"):]
        self.mode = resolve_direction(self.monitor, early.mode)
        self.overfit_patience = overfit_patience
        self.write = write
        self.lr_log_every = lr_log_every
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "schedule")) if write else None
        self.nan_detected = False
        self.warnings: list[str] = []
        self.stage_index = 0

    # ------------------------------------------------------------------------------------- per step
    def _learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(unwrapped(self.model.optimizer).effective_learning_rate()))

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.nan_detected = True
            self.model.stop_training = True
            message = f"Loss became {float(loss)} at step {int(self.model.optimizer.iterations.numpy())}; " \
                      f"training stopped, the best checkpoint so far is kept."
            log.error(message)
            print(message, flush=True)
            return
        step = int(self.model.optimizer.iterations.numpy())
        if self.writer is not None and step % self.lr_log_every == 0:
            with self.writer.as_default(step=step):
                tf.summary.scalar("learning_rate", self._learning_rate())
                tf.summary.scalar("freezing_stage", self.stage_index)

    def set_stage(self, epoch, stage, index) -> None:
        self.stage_index = index

    # ------------------------------------------------------------------------------------- per epoch
    def on_epoch_end(self, epoch, logs=None):
        if self.nan_detected:
            return
        logs = dict(logs or {})
        logs["learning_rate"] = self._learning_rate()
        logs["freezing_stage"] = float(self.stage_index)
        self.state.append(logs)
        if logs is not None:
            logs_out = logs
        best_index, best_value = self.state.best(self.monitor, self.mode, self.early.min_delta)
        if best_index == len(self.state.epochs) - 1 and self.write:
            self.model.save_weights(str(self.best_weights))
            log.info("New best %s=%.5f at epoch %d -> %s", self.monitor, best_value, epoch + 1, self.best_weights)
        self._check_overfitting(epoch)
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                tf.summary.scalar("epoch_learning_rate", logs_out["learning_rate"])
                tf.summary.scalar("epoch_freezing_stage", self.stage_index)
        if self.early.enabled and best_index is not None:
            waited = len(self.state.epochs) - 1 - best_index
            if waited > self.early.patience:
                self.model.stop_training = True
                print(f"Early stopping at epoch {epoch + 1}: {self.monitor} has not improved for {waited} epochs "
                      f"(best {best_value:.5f} at epoch {best_index + 1}).", flush=True)

    def _check_overfitting(self, epoch: int) -> None:
        k = self.overfit_patience
        history = self.state.epochs
        if len(history) < k + 1 or "val_loss" not in history[-1]:
            return
        recent = history[-(k + 1):]
        val_rising = all(b["val_loss"] > a["val_loss"] for a, b in zip(recent, recent[1:]))
        train_falling = all(b["loss"] < a["loss"] for a, b in zip(recent, recent[1:]))
        if val_rising and train_falling:
            message = (f"Overfitting warning at epoch {epoch + 1}: validation loss rose for {k} epochs "
                       f"({recent[0]['val_loss']:.4f} -> {recent[-1]['val_loss']:.4f}) while training loss fell. "
                       f"Consider more regularization, a lower learning rate, freezing more, or early stopping.")
            self.warnings.append(message)
            log.warning(message)
            print(message, flush=True)
            if self.writer is not None:
                with self.writer.as_default(step=epoch):
                    tf.summary.text("overfitting_warning", message)
