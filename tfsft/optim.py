"""The optimizer of a run: Adam / AdamW / SGD with weight decay, clipping, accumulation and EMA.

Each variable's learning rate is tfsft.learning_rate's formula (the schedule is the optimizer's `learning_rate`;
`ScaledLearningRates` applies the stage factor and the per-variable multipliers inside the update step, for the
update and for decoupled weight decay alike). Overridden Keras internals live in tfsft.keras_internals.
"""

from __future__ import annotations

import keras

from tfsft.config import OptimizerConfig
from tfsft.keras_internals import (
    FusedAdamUpdate,
    PerVariableWeightDecay,
    SinglePassGlobalNormClipping,
    add_weight_decay_exclusions,
)
from tfsft.learning_rate import ScaledLearningRates, WarmupDecay, unwrapped

__all__ = ["Adam", "AdamW", "SGD", "WarmupDecay", "build_optimizer", "exclude_from_weight_decay", "unwrapped"]


@keras.saving.register_keras_serializable(package="tfsft")
class AdamW(
    ScaledLearningRates, PerVariableWeightDecay, SinglePassGlobalNormClipping, FusedAdamUpdate, keras.optimizers.AdamW
):
    pass


@keras.saving.register_keras_serializable(package="tfsft")
class Adam(
    ScaledLearningRates, PerVariableWeightDecay, SinglePassGlobalNormClipping, FusedAdamUpdate, keras.optimizers.Adam
):
    pass


@keras.saving.register_keras_serializable(package="tfsft")
class SGD(ScaledLearningRates, PerVariableWeightDecay, SinglePassGlobalNormClipping, keras.optimizers.SGD):
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
        optimizer = AdamW(
            weight_decay=cfg.weight_decay, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon, **common
        )
    elif cfg.name == "adam":
        optimizer = Adam(
            weight_decay=cfg.weight_decay or None, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon, **common
        )
    else:
        optimizer = SGD(momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay or None, **common)
    if optimizer.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.weights if len(v.shape) <= 1])
    return optimizer


def exclude_from_weight_decay(optimizer, variables) -> None:
    """Add `variables` to the optimizer's weight-decay exclusions (Keras's own method replaces the set)."""
    add_weight_decay_exclusions(optimizer, variables)
