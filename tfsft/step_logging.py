"""Per-step monitoring during `fit`: training loss over the interval, the learning rate as applied, the gradient
norm before clipping and examples/s every `logging.every_steps`; optional in-epoch validation; a progress line
for logs that are not a terminal.

Everything is read from state the train step already keeps (Keras's running loss mean, the optimizer's step
counter and schedule) except the gradient norm, which one wrapped optimizer method accumulates in two variables
inside the compiled step: nothing is synchronised with the device between logging points but the loss, which
the NaN guard reads every step anyway.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from tfsft.clipping import global_norm
from tfsft.config import LoggingConfig
from tfsft.keras_internals import wrap_clip_gradients
from tfsft.learning_rate import get_lr, unwrapped
from tfsft.step_history import FILE_NAME, StepHistory

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- gradient norm
class GradientNormProbe:
    """Sums the global gradient norm (before clipping) of every optimizer update, for a mean per interval.

    It wraps `_clip_gradients` on the optimizer instance, the one place Keras hands over the final (unscaled,
    accumulated) gradients before clipping them. The variables live outside the optimizer so that checkpoints
    stay the same with and without logging.
    """

    def __init__(self, optimizer):
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA  # the replicas hold the same all-reduced norm
        self.total = tf.Variable(0.0, trainable=False, dtype=tf.float32, aggregation=aggregation)
        self.count = tf.Variable(0.0, trainable=False, dtype=tf.float32, aggregation=aggregation)

        def observe(grads):
            if any(g is not None for g in grads):
                # The same ops on the same tensors as global-norm clipping's (tfsft.clipping.global_norm), which
                # grappler's duplicate-computation pass can merge (not checked on the optimized graph).
                self.total.assign_add(global_norm(grads))
                self.count.assign_add(1.0)

        wrap_clip_gradients(unwrapped(optimizer), observe)

    def mean_and_reset(self) -> float | None:
        count = float(self.count.numpy())
        value = float(self.total.numpy()) / count if count else None
        self.total.assign(0.0)
        self.count.assign(0.0)
        return value


# ----------------------------------------------------------------------------------------- learning rates
class AppliedLearningRates:
    """The learning rate each parameter group received at a step (tfsft.learning_rate.get_lr), 0 for a group with
    no trainable variable (a frozen backbone). One group (`learning_rate`) unless freezing or
    `freeze.backbone_lr_factor` can make the backbone's differ from the head's; the backbone group's rate is
    without layer-wise decay (each unit's differs: the top unit's is x layerwise_lr_decay)."""

    def __init__(self, optimizer, plan):
        self.optimizer = unwrapped(optimizer)
        self.backbone = plan.backbone
        self.backbone_factor = plan.cfg.backbone_lr_factor
        self.split = len(plan.stages) > 1 or plan.stages[0].trainable_units != "all" or self.backbone_factor != 1.0
        self.backbone_trains = True

    @property
    def names(self) -> list[str]:
        return ["learning_rate/head", "learning_rate/backbone"] if self.split else ["learning_rate"]

    def refresh_trainable(self) -> None:
        """Called when the freezing stage may have changed (epoch start)."""
        self.backbone_trains = bool(self.backbone.trainable_weights)

    def _rate(self, step: int, multiplier: float = 1.0) -> float:
        """The rate of the update that made optimizer step `step` (counted from 1)."""
        return float(keras.ops.convert_to_numpy(get_lr(self.optimizer, max(step - 1, 0), multiplier=multiplier)))

    def base(self, step: int) -> float:
        """Schedule x stage factor (a head variable's rate) of the update that made optimizer step `step`."""
        return self._rate(step)

    def at(self, step: int) -> dict[str, float]:
        if not self.split:
            return {"learning_rate": self.base(step)}
        return {
            "learning_rate/head": self.base(step),
            "learning_rate/backbone": self._rate(step, self.backbone_factor) if self.backbone_trains else 0.0,
        }


# ----------------------------------------------------------------------------------------- step logger
class StepLogger(keras.callbacks.Callback):
    """Per-step scalars to TensorBoard (`logs/train_steps`, `logs/validation_steps`), `history_steps.csv` and
    the trackers (`sinks`: objects with `log_metrics(dict, step)`)."""

    def __init__(
        self,
        cfg: LoggingConfig,
        run_dir: Path,
        log_dir: Path,
        steps_per_epoch: int,
        batch_size: int,
        rates: AppliedLearningRates,
        probe: GradientNormProbe | None = None,
        validation=None,
        validation_steps: int | None = None,
        sinks: Sequence = (),
        write: bool = True,
    ):
        super().__init__()
        self.interval = cfg.interval(steps_per_epoch)
        self.validate_every = cfg.validate_every_steps if validation is not None else None
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.rates, self.probe, self.sinks = rates, probe, list(sinks)
        self.validation, self.validation_steps = validation, validation_steps
        self.history = StepHistory(Path(run_dir) / FILE_NAME, write=write)
        self.writers = {
            name: tf.summary.create_file_writer(str(Path(log_dir) / name)) if write else None
            for name in ("train_steps", "validation_steps")
        }
        self.epoch = 0
        self._carry_sum = self._carry_n = 0.0  # steps of the previous epoch not yet logged
        self._columns: list[str] | None = None
        self._metric_names: list[str] | None = None

    # ------------------------------------------------------------------ bookkeeping
    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        self.history.truncate_after(self._step())
        self._carry_sum = self._carry_n = 0.0
        self._seconds, self._steps_at_mark = 0.0, self._step()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.rates.refresh_trainable()
        self._cum_at_mark, self._batches_at_mark, self._batches = 0.0, 0, 0
        self._resumed_at = time.perf_counter()

    def _elapsed(self) -> float:
        return self._seconds + time.perf_counter() - self._resumed_at

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        if self._metric_names is None:
            self._metric_names = list(logs)  # loss and the compiled metrics, as Keras names them in logs
        self._batches = batch + 1
        self._epoch_mean = logs.get("loss")
        step = self._step()
        if step % self.interval == 0 and self._epoch_mean is not None:
            self._log_train(step, float(self._epoch_mean))
        if self.validate_every and step % self.validate_every == 0 and step % self.steps_per_epoch != 0:
            self._seconds = self._elapsed()  # validation time is not training time (examples/s)
            self._validate(step)
            self._resumed_at = time.perf_counter()

    def _log_train(self, step: int, epoch_mean: float) -> None:
        # Keras's `loss` is the mean since the epoch began: the interval's mean follows from two running sums.
        cumulative = epoch_mean * self._batches
        n = self._batches - self._batches_at_mark + self._carry_n
        loss = (cumulative - self._cum_at_mark + self._carry_sum) / n if n else float("nan")
        seconds = self._elapsed()
        steps = step - self._steps_at_mark
        row = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "loss": loss,
            **self.rates.at(step),
            "gradient_norm": self.probe.mean_and_reset() if self.probe else None,
            "examples_per_second": steps * self.batch_size / seconds if seconds > 0 and steps > 0 else None,
        }
        self._cum_at_mark, self._batches_at_mark = cumulative, self._batches
        self._carry_sum = self._carry_n = 0.0
        self._seconds, self._resumed_at, self._steps_at_mark = 0.0, time.perf_counter(), step
        self._emit("train_steps", row, step)

    def _validate(self, step: int) -> None:
        # evaluate() resets the metric states the train step accumulates into: keep and restore them, so the
        # epoch's training metrics stay whole.
        saved = [[v.numpy() for v in m.variables] for m in self.model.metrics]
        results = self.model.evaluate(self.validation, steps=self.validation_steps, verbose=0, return_dict=True)
        for metric, values in zip(self.model.metrics, saved):
            for variable, value in zip(metric.variables, values):
                variable.assign(value)
        self._emit(
            "validation_steps",
            {"step": step, "epoch": step / self.steps_per_epoch, **{f"val_{k}": float(v) for k, v in results.items()}},
            step,
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self._seconds = self._elapsed()
        if "loss" in logs and self._batches:
            total = float(logs["loss"]) * self._batches
            self._carry_sum += total - self._cum_at_mark
            self._carry_n += self._batches - self._batches_at_mark
        step = self._step()
        val = {k: float(v) for k, v in logs.items() if k.startswith("val_")}
        if val:
            self._emit("validation_steps", {"step": step, "epoch": step / self.steps_per_epoch, **val}, step)
        epoch_scalars = {f"epoch_{k}": float(v) for k, v in logs.items() if not k.startswith("val_")}
        epoch_scalars.update({f"epoch_{k}": v for k, v in val.items()})
        for sink in self.sinks:
            sink.log_metrics(epoch_scalars, step)

    # ------------------------------------------------------------------ output
    def _emit(self, kind: str, row: dict, step: int) -> None:
        scalars = {k: v for k, v in row.items() if k not in ("step", "epoch") and v is not None}
        writer = self.writers[kind]
        if writer is not None:
            with writer.as_default(step=step):
                for name, value in scalars.items():
                    tf.summary.scalar(name.removeprefix("val_"), value)
            writer.flush()
        self.history.append(row, self._csv_columns(row))
        for sink in self.sinks:
            sink.log_metrics(scalars, step)

    def _csv_columns(self, row: dict) -> list[str]:
        if self._columns is None:
            names = ["loss", *(n for n in self._metric_names or [] if n != "loss")]
            val = [f"val_{n}" for n in names] if self.validation is not None else []
            self._columns = ["step", "epoch", "loss", *self.rates.names, "gradient_norm", "examples_per_second", *val]
        return self._columns


# ----------------------------------------------------------------------------------------- progress line
def progress_wanted(enabled, stream=None) -> bool:
    if enabled == "auto":
        stream = stream or sys.stdout
        return not (hasattr(stream, "isatty") and stream.isatty())
    return bool(enabled)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLine(keras.callbacks.Callback):
    """One line every `every_steps` steps or `every_seconds` seconds, for logs without a terminal."""

    def __init__(
        self,
        every_steps: int | None,
        every_seconds: float,
        steps_per_epoch: int,
        epochs: int,
        batch_size: int,
        rates: AppliedLearningRates,
        stream=None,
    ):
        super().__init__()
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.total = steps_per_epoch * epochs
        self.steps_per_epoch, self.epochs, self.batch_size = steps_per_epoch, epochs, batch_size
        self.rates = rates
        self.stream = stream

    def on_train_begin(self, logs=None):
        self._start_time = self._last_time = time.perf_counter()
        self._start_step = self._last_step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        step = int(self.model.optimizer.iterations.numpy())
        due_steps = self.every_steps and step - self._last_step >= self.every_steps
        if not (due_steps or now - self._last_time >= self.every_seconds):
            return
        loss = (logs or {}).get("loss")
        rate = (step - self._last_step) * self.batch_size / max(now - self._last_time, 1e-9)
        per_step = (now - self._start_time) / max(step - self._start_step, 1)
        line = (
            f"step {step}/{self.total}  epoch {self.epoch + 1}/{self.epochs}  loss {float(loss):.4f}  "
            if loss is not None
            else f"step {step}/{self.total}  "
        )
        line += f"lr {self.rates.base(step):.3g}  {rate:.1f} ex/s  ETA {_duration(per_step * (self.total - step))}"
        print(line, file=self.stream or sys.stdout, flush=True)
        self._last_time, self._last_step = now, step


def monitoring_callbacks(
    cfg: LoggingConfig,
    model,
    plan,
    strategy,
    run,
    steps_per_epoch: int,
    epochs: int,
    batch_size: int,
    validation,
    validation_steps,
    sinks=(),
    write: bool = True,
) -> list:
    """The StepLogger (and the progress line when stdout is not a terminal) for one run."""
    rates = AppliedLearningRates(model.optimizer, plan)
    probe = None
    if cfg.gradient_norm:
        with strategy.scope():
            probe = GradientNormProbe(model.optimizer)
    callbacks = [
        StepLogger(
            cfg,
            run.path,
            run.logs,
            steps_per_epoch,
            batch_size,
            rates,
            probe,
            validation,
            validation_steps,
            sinks,
            write,
        )
    ]
    if progress_wanted(cfg.progress.enabled):
        callbacks.append(
            ProgressLine(
                cfg.progress.every_steps, cfg.progress.every_seconds, steps_per_epoch, epochs, batch_size, rates
            )
        )
    return callbacks
