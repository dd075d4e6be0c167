"""The learning rate of every variable at every step: one formula, in one place (nanoGPT's `get_lr(it)`).

    lr(step, epoch, variable) = optimizer.learning_rate              peak                      (optimizer)
                              x shape(step)                          warmup, then decay        (schedule)
                              x stage(epoch).lr_factor               gradual unfreezing        (freeze.schedule)
                              x freeze.backbone_lr_factor            backbone variables only   (freeze)
                              x freeze.layerwise_lr_decay ** depth   backbone variables only   (freeze)

- `step` is the 0-based index of the update (the optimizer's `iterations` before it): a restored optimizer
  restores the schedule's position. `shape` rises linearly from 1/warmup to 1 over `warmup_steps`
  (`warmup_ratio` x all steps), then stays (constant) or decays linearly / by cosine / exponentially over the
  remaining steps, never below `min_lr_ratio` (`WarmupDecay`).
- `stage(epoch)` is the freezing stage of the epoch (tfsft.freezing.FreezePlan; 1 unless a `gradual` schedule
  gives a factor); a resumed run recomputes it from the epoch.
- `depth` counts backbone units from the top: 1 for the top unit, len(units) for the stem (ELECTRA/BEiT: the head
  has depth 0). Head variables get neither backbone factor.

Decoupled weight decay uses the same per-variable rate. The schedule term is a Keras `LearningRateSchedule`
(`learning_rate=` of the optimizer; lr_find replaces it with its sweep); the stage factor and the per-variable
multipliers live in the optimizer (`ScaledLearningRates`), set by `attach` and `set_stage`. `get_lr` evaluates
the formula for any step and variable: the logged learning rates (callbacks, step_logging) read it there.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tfsft.config import FreezeConfig, RunConfig
from tfsft.keras_internals import schedule_of, variable_key


# ----------------------------------------------------------------------------------------- the schedule term
@keras.saving.register_keras_serializable(package="tfsft")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then constant / linear / cosine / exponential decay.

    Decay runs over the remaining `total_steps - warmup_steps` and never goes below `peak * min_ratio`.
    """

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int = 0,
        decay: str = "linear",
        min_ratio: float = 0.0,
        decay_rate: float = 0.5,
        decay_steps: int = 1,
    ):
        self.peak = float(peak)
        self.total_steps = int(max(total_steps, 1))
        self.warmup_steps = int(min(warmup_steps, self.total_steps))
        self.decay = decay
        self.min_ratio = float(min_ratio)
        self.decay_rate = float(decay_rate)
        self.decay_steps = int(max(decay_steps, 1))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        if self.warmup_steps > 0:
            warm = self.peak * ops.minimum((step + 1.0) / warmup, 1.0)
        else:
            warm = ops.convert_to_tensor(self.peak, "float32")
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - warmup) / span, 0.0, 1.0)
        floor = self.min_ratio
        if self.decay == "constant":
            shape = ops.convert_to_tensor(1.0, "float32")
        elif self.decay == "linear":
            shape = floor + (1.0 - floor) * (1.0 - progress)
        elif self.decay == "cosine":
            shape = floor + (1.0 - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.decay == "exponential":
            decayed = ops.power(self.decay_rate, ops.maximum(step - warmup, 0.0) / float(self.decay_steps))
            shape = ops.maximum(decayed, floor)
        else:
            raise ValueError(f"Unknown decay {self.decay!r}")
        return ops.where(step < warmup, warm, self.peak * shape)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "min_ratio": self.min_ratio,
            "decay_rate": self.decay_rate,
            "decay_steps": self.decay_steps,
        }


def build_schedule(config: RunConfig, total_steps: int, steps_per_epoch: int) -> WarmupDecay:
    """peak x shape(step) of a run: `optimizer.learning_rate` shaped by the `schedule` section."""
    cfg = config.schedule
    warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * total_steps))
    return WarmupDecay(
        peak=config.optimizer.learning_rate,
        total_steps=total_steps,
        warmup_steps=warmup,
        decay=cfg.name,
        min_ratio=cfg.min_lr_ratio,
        decay_rate=cfg.decay_rate,
        decay_steps=cfg.decay_steps or steps_per_epoch,
    )


# ----------------------------------------------------------------------------------------- per-variable terms
def unit_multiplier(cfg: FreezeConfig, depth: int) -> float:
    """backbone_lr_factor x layerwise_lr_decay ** depth: the multiplier of a backbone unit `depth` from the top."""
    return cfg.backbone_lr_factor * cfg.layerwise_lr_decay**depth


def backbone_multipliers(cfg: FreezeConfig, backbone: keras.Model, units) -> list[tuple]:
    """(variable, multiplier) of each backbone variable whose multiplier is not 1; `units` bottom to top.

    Keras variables are not hashable, hence pairs rather than a dict. A backbone variable outside every unit gets
    backbone_lr_factor alone."""
    if cfg.backbone_lr_factor == 1.0 and cfg.layerwise_lr_decay == 1.0:
        return []
    multipliers = {id(w): (w, cfg.backbone_lr_factor) for w in backbone.weights}
    if cfg.layerwise_lr_decay != 1.0:
        for depth, unit in enumerate(reversed(units), start=1):
            for w in unit.weights():
                multipliers[id(w)] = (w, unit_multiplier(cfg, depth))
    return list(multipliers.values())


# ----------------------------------------------------------------------------------------- the formula
def applied(scheduled, stage_factor, multiplier):
    """The formula's product: scheduled (peak x shape(step)) x stage factor x per-variable multiplier.

    The two factors multiply first (as the update step always has: the same float32 rounding, the same run)."""
    return scheduled * (stage_factor * multiplier)


def get_lr(optimizer, step: int | None = None, variable=None, multiplier: float | None = None):
    """The learning rate of update `step` (0-based; default: the next one) for `variable` (default: a head
    variable) or for an explicit per-variable `multiplier`, as a float32 tensor."""
    inner = unwrapped(optimizer)
    if step is None:
        scheduled = inner.learning_rate
    else:
        schedule = schedule_of(inner)
        scheduled = schedule(step) if callable(schedule) else schedule
    if multiplier is None:
        multiplier = inner.lr_multiplier(variable) if variable is not None else 1.0
    return applied(ops.cast(scheduled, "float32"), ops.cast(inner.stage_factor, "float32"), multiplier)


class ScaledLearningRates:
    """Mixin for Keras optimizers: holds the stage factor and the per-variable multipliers, and applies the
    formula in the update step (the schedule term is Keras's own `learning_rate`)."""

    learning_rate: Any  # the Keras optimizer's own (the schedule); declared for the type checker only

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ensure_scaling_state()

    def _ensure_scaling_state(self):
        if not hasattr(self, "_lr_multipliers"):
            self._lr_multipliers = {}
        if not hasattr(self, "_step_rates"):
            self._step_rates = _StepRates()
        if not hasattr(self, "stage_factor"):
            # Not an optimizer variable: it is derived from the epoch on resume, and keeping it out of
            # `self.variables` keeps checkpoints compatible across freezing configurations.
            self.stage_factor = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="stage_lr_factor")

    def set_lr_multipliers(self, multipliers) -> None:
        """`multipliers`: (variable, factor) pairs, or a dict of them; unlisted variables use 1.0."""
        self._ensure_scaling_state()
        pairs = multipliers.items() if isinstance(multipliers, dict) else multipliers
        self._lr_multipliers = {variable_key(self, v): float(f) for v, f in pairs}

    def lr_multiplier(self, variable) -> float:
        self._ensure_scaling_state()
        return self._lr_multipliers.get(variable_key(self, variable), 1.0)

    def learning_rate_of(self, variable):
        """This step's learning rate of `variable` (weight decay uses it)."""
        return get_lr(self, variable=variable)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Keras passes every variable of one update the same `learning_rate`: each distinct rate (one without
        # LLRD, a handful with it) is built once per update rather than ~100 times in the traced graph. The
        # cache lives for this call only, so no tensor outlives the graph it was built in.
        self._ensure_scaling_state()
        self._step_rates.clear()
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_rates.clear()

    def update_step(self, gradient, variable, learning_rate):
        self._ensure_scaling_state()
        multiplier = self.lr_multiplier(variable)
        rate = self._step_rates.get(learning_rate, multiplier)
        if rate is None:
            rate = applied(learning_rate, ops.cast(self.stage_factor, learning_rate.dtype), multiplier)
            self._step_rates.put(learning_rate, multiplier, rate)
        return super().update_step(gradient, variable, rate)


class _StepRates:
    """The learning rates built during one update, by multiplier. A plain object, so that TensorFlow's attribute
    tracking does not turn it into checkpointed state; keyed by the update's `learning_rate` object as well, so
    that a rate is reused only for the very tensor it was computed from."""

    def __init__(self) -> None:
        self._rates: dict = {}

    def get(self, learning_rate, multiplier):
        return self._rates.get((id(learning_rate), multiplier), (None, None))[1]

    def put(self, learning_rate, multiplier, rate) -> None:
        self._rates[(id(learning_rate), multiplier)] = (learning_rate, rate)  # holds learning_rate: its id stays

    def clear(self) -> None:
        self._rates.clear()


# ----------------------------------------------------------------------------------------- wiring
def unwrapped(optimizer) -> ScaledLearningRates:
    """tfsft's optimizer behind Keras's LossScaleOptimizer, which compile() wraps it in under mixed_float16."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def set_stage(optimizer, stage) -> None:
    """Make `stage.lr_factor` the stage term of every following update."""
    inner = unwrapped(optimizer)
    inner._ensure_scaling_state()
    inner.stage_factor.assign(float(stage.lr_factor))


def attach(optimizer, plan) -> None:
    """Give the optimizer the per-variable terms of `plan`'s config and the stage term of its current stage."""
    inner = unwrapped(optimizer)
    inner.set_lr_multipliers(backbone_multipliers(plan.cfg, plan.backbone, plan.units))
    set_stage(inner, plan.current_stage)
