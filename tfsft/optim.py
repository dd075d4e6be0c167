"""Optimizer, learning-rate schedule (+ warmup), weight decay, clipping and per-part learning rates.

The schedule is a function of the optimizer's iteration counter, so restoring the optimizer from a
checkpoint restores the schedule's position. A stage factor (gradual unfreezing) and per-variable
multipliers (discriminative learning rates: backbone LR = head LR x factor) scale what the schedule
gives, inside the update step, for the update and for decoupled weight decay alike.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from tfsft.config import OptimizerConfig, ScheduleConfig


@keras.saving.register_keras_serializable(package="tfsft")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then constant / linear / cosine / exponential decay.

    Decay runs over the remaining `total_steps - warmup_steps` and never goes below `peak * min_ratio`.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, decay: str = "linear",
                 min_ratio: float = 0.0, decay_rate: float = 0.5, decay_steps: int = 1):
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
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "decay": self.decay, "min_ratio": self.min_ratio, "decay_rate": self.decay_rate,
                "decay_steps": self.decay_steps}


def build_schedule(cfg: ScheduleConfig, peak: float, total_steps: int, steps_per_epoch: int) -> WarmupDecay:
    warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * total_steps))
    return WarmupDecay(peak=peak, total_steps=total_steps, warmup_steps=warmup, decay=cfg.name,
                       min_ratio=cfg.min_lr_ratio, decay_rate=cfg.decay_rate,
                       decay_steps=cfg.decay_steps or steps_per_epoch)


class ScaledLearningRates:
    """Mixin for Keras optimizers: a global stage factor and per-variable learning-rate multipliers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ensure_scaling_state()

    def _ensure_scaling_state(self):
        if not hasattr(self, "_lr_multipliers"):
            self._lr_multipliers = {}
        if not hasattr(self, "stage_factor"):
            # Not an optimizer variable: it is derived from the epoch on resume, and keeping it out of
            # `self.variables` keeps checkpoints compatible across freezing configurations.
            self.stage_factor = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="stage_lr_factor")

    def set_lr_multipliers(self, multipliers) -> None:
        """`multipliers`: (variable, factor) pairs, or a dict of them; unlisted variables use 1.0."""
        self._ensure_scaling_state()
        pairs = multipliers.items() if isinstance(multipliers, dict) else multipliers
        self._lr_multipliers = {self._var_key(v): float(f) for v, f in pairs}

    def set_stage_factor(self, factor: float) -> None:
        self._ensure_scaling_state()
        self.stage_factor.assign(float(factor))

    def effective_learning_rate(self, variable=None):
        self._ensure_scaling_state()
        lr = ops.cast(self.learning_rate, "float32") * ops.cast(self.stage_factor, "float32")
        if variable is not None:
            lr = lr * self._lr_multipliers.get(self._var_key(variable), 1.0)
        return lr

    def update_step(self, gradient, variable, learning_rate):
        self._ensure_scaling_state()
        scale = ops.cast(self.stage_factor, learning_rate.dtype) * self._lr_multipliers.get(
            self._var_key(variable), 1.0)
        return super().update_step(gradient, variable, learning_rate * scale)

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        for variable in variables:
            if self._use_weight_decay(variable):
                lr = ops.cast(self.effective_learning_rate(variable), variable.dtype)
                variable.assign_sub(variable * ops.cast(self.weight_decay, variable.dtype) * lr)


class FusedAdamUpdate:
    """Mixin for Keras Adam/AdamW: each variable's Adam update as TensorFlow's one fused `ResourceApplyAdam` op.

    Keras 3 writes the update as ~20 small ops per variable. A transformer has ~100 variables, so that is ~2,000
    ops in the training graph: on a 2-core CPU they cost seconds of Python tracing and graph optimisation
    before the first step, and an executor dispatch each at every step. The fused kernel computes the same
    formula (m, v moments; lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) bias correction; epsilon added to sqrt(v));
    the step's scalars (beta powers) are built once per step and shared by every variable. AMSGrad keeps Keras's
    own update, and so do sparse gradients (see `update_step`). Overrides Keras internals (`_backend_update_step`, `_momentums`, `_velocities`), checked
    against Keras 3.15 (pinned in pyproject.toml); tests/test_training.py compares it with Keras's AdamW.
    """

    _step_scalars = None

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._step_scalars = {}
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_scalars = None

    def _adam_scalars(self, dtype) -> dict:
        cached = self._step_scalars.get(dtype) if self._step_scalars is not None else None
        if cached is None:
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            cached = dict(beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), beta1=beta_1,
                          beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype))
            if self._step_scalars is not None:
                self._step_scalars[dtype] = cached
        return cached

    def update_step(self, gradient, variable, learning_rate):
        # A sparse gradient (an embedding's, unclipped) keeps Keras's update: it moves the moments of the rows
        # in the batch only, where the fused kernel would decay every row's.
        if getattr(self, "amsgrad", False) or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        momentum, velocity = self._momentums[index], self._velocities[index]
        tf.raw_ops.ResourceApplyAdam(var=_handle(variable), m=_handle(momentum), v=_handle(velocity),
                                     lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
                                     **self._adam_scalars(dtype))


def _handle(variable):
    """The resource handle of a Keras or tf variable (inside a distribution update: this replica's copy)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


@keras.saving.register_keras_serializable(package="tfsft")
class AdamW(ScaledLearningRates, FusedAdamUpdate, keras.optimizers.AdamW):
    pass


@keras.saving.register_keras_serializable(package="tfsft")
class Adam(ScaledLearningRates, FusedAdamUpdate, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="tfsft")
class SGD(ScaledLearningRates, keras.optimizers.SGD):
    pass


def build_optimizer(cfg: OptimizerConfig, schedule, model: keras.Model) -> keras.optimizers.Optimizer:
    """An unbuilt optimizer; weight decay skips biases and normalization parameters (all 1-D variables)."""
    clip = {}
    if cfg.clip.mode == "global_norm":
        clip["global_clipnorm"] = cfg.clip.value
    elif cfg.clip.mode == "norm":
        clip["clipnorm"] = cfg.clip.value
    elif cfg.clip.mode == "value":
        clip["clipvalue"] = cfg.clip.value
    common = dict(
        learning_rate=schedule,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps if cfg.gradient_accumulation_steps > 1 else None,
        use_ema=cfg.ema.enabled,
        ema_momentum=cfg.ema.momentum,
        **clip,
    )
    if cfg.name == "adamw":
        optimizer = AdamW(weight_decay=cfg.weight_decay, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
                          epsilon=cfg.epsilon, **common)
    elif cfg.name == "adam":
        optimizer = Adam(weight_decay=cfg.weight_decay or None, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
                         epsilon=cfg.epsilon, **common)
    else:
        optimizer = SGD(momentum=cfg.momentum, nesterov=cfg.nesterov,
                        weight_decay=cfg.weight_decay or None, **common)
    if optimizer.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.weights if len(v.shape) <= 1])
    return optimizer


def unwrapped(optimizer) -> ScaledLearningRates:
    """tfsft's optimizer behind Keras's LossScaleOptimizer, which compile() wraps it in under mixed_float16."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def exclude_from_weight_decay(optimizer, variables) -> None:
    """Add `variables` to the optimizer's weight-decay exclusions (Keras's own method replaces the set)."""
    excluded = set(getattr(optimizer, "_exclude_from_weight_decay", None) or ())
    optimizer._exclude_from_weight_decay = excluded | {optimizer._var_key(v) for v in variables}
    optimizer._exclude_from_weight_decay_cache = {}
