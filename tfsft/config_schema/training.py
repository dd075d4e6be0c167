"""Config sections of the training itself: freezing, optimizer and schedule, regularization, the training loop
and the distribution strategy.

Part of the run's schema (tfsft.config, where they are imported from); no TensorFlow or Keras import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tfsft.config_schema.base import Section


# ----------------------------------------------------------------------------------------- freezing
class FreezeStage(Section):
    epoch: int = Field(..., ge=0, description="First epoch (0-based) of this stage.")
    trainable_units: int | Literal["all"] = Field(..., description="Backbone units trained, counted from the top.")
    lr_factor: float = Field(1.0, gt=0.0, description="Multiplies the scheduled learning rate during this stage.")

    @model_validator(mode="after")
    def _non_negative(self):
        if isinstance(self.trainable_units, int) and self.trainable_units < 0:
            raise ValueError(f"trainable_units must be >= 0 or 'all', got {self.trainable_units}")
        return self


class FreezeConfig(Section):
    strategy: Literal["none", "backbone", "last_n", "gradual"] = "none"
    last_n: int = Field(2, ge=0, description="last_n: backbone units (blocks / transformer layers) left trainable.")
    granularity: Literal["block", "stage"] = Field(
        "block", description="Unit of last_n for CNNs: residual block or stage."
    )
    schedule: list[FreezeStage] = Field(
        default_factory=lambda: [
            FreezeStage(epoch=0, trainable_units=0),
            FreezeStage(epoch=1, trainable_units=2),
            FreezeStage(epoch=2, trainable_units="all", lr_factor=0.5),
        ]
    )
    backbone_lr_factor: float = Field(1.0, gt=0.0, le=10.0, description="Backbone LR = head LR x this factor.")
    layerwise_lr_decay: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Layer-wise LR decay: a backbone unit's LR = head LR x backbone_lr_factor x "
        "this^(depth from the top: 1 for the top unit, units+1... for the stem).",
    )
    train_batchnorm: bool | Literal["auto"] = Field(
        "auto",
        description="Unfrozen BatchNorm layers learn and update their statistics. auto: only for a backbone "
        "without pretrained weights; pretrained BatchNorm stays in inference mode.",
    )

    @model_validator(mode="after")
    def _schedule_ordered(self):
        epochs = [s.epoch for s in self.schedule]
        if self.strategy == "gradual":
            if not epochs or epochs[0] != 0:
                raise ValueError("freeze.schedule must start with a stage at epoch 0")
            if epochs != sorted(set(epochs)):
                raise ValueError(f"freeze.schedule epochs must be strictly increasing, got {epochs}")
        return self


# ----------------------------------------------------------------------------------------- optimization
class ClipConfig(Section):
    mode: Literal["none", "global_norm", "norm", "value"] = "global_norm"
    value: float = Field(1.0, gt=0.0)


class EmaConfig(Section):
    enabled: bool = False
    momentum: float = Field(0.999, gt=0.0, lt=1.0)


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    learning_rate: float = Field(5e-5, gt=0.0, le=10.0)
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    beta_1: float = Field(0.9, ge=0.0, lt=1.0)
    beta_2: float = Field(0.999, ge=0.0, lt=1.0)
    epsilon: float = Field(1e-7, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    clip: ClipConfig = ClipConfig()
    gradient_accumulation_steps: int = Field(1, ge=1)
    ema: EmaConfig = EmaConfig()


class ScheduleConfig(Section):
    name: Literal["constant", "exponential", "cosine", "linear"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Warmup as a fraction of all steps (if steps=0).")
    decay_rate: float = Field(0.5, gt=0.0, le=1.0, description="exponential: factor per decay_steps.")
    decay_steps: int | None = Field(None, ge=1, description="exponential: default one epoch.")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Floor of cosine/linear/exponential decay.")


# ----------------------------------------------------------------------------------------- regularization
class PretrainedAnchorConfig(Section):
    """Keep the fine-tuned backbone near the pretrained one (tfsft/regularization.py)."""

    kind: Literal["none", "l2sp", "features"] = Field(
        "none",
        description="l2sp: alpha/2 ||w - w0||^2 over the backbone; features: alpha/2 * mean ||f - f0||^2 "
        "between pooled features of the backbone and a frozen pretrained copy (2nd forward pass).",
    )
    alpha: float = Field(0.01, ge=0.0, le=1e6, description="Weight of the pretrained anchor.")
    beta: float = Field(
        0.0, ge=0.0, le=1e6, description="beta/2 ||w||^2 over the new head (replaces its weight decay)."
    )


class RegularizationConfig(Section):
    pretrained_anchor: PretrainedAnchorConfig = PretrainedAnchorConfig()


# ----------------------------------------------------------------------------------------- training loop
class EarlyStoppingConfig(Section):
    enabled: bool = True
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0.0)
    restore_best: bool = True


class TrainingConfig(Section):
    epochs: int = Field(3, ge=1, le=10_000)
    batch_size: int = Field(
        32,
        ge=1,
        description="Global batch size: one optimizer step sees this many examples, split evenly across the replicas.",
    )
    per_replica_batch_size: int | None = Field(
        None,
        ge=1,
        description="Set instead of batch_size to fix the batch per device: the global batch becomes "
        "this x the number of replicas (all GPUs of all workers).",
    )
    steps_per_epoch: int | None = Field(None, ge=1, description="Cap the steps of each epoch (quick runs).")
    validation_steps: int | None = Field(None, ge=1)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] | dict[str, float] = "none"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    overfit_patience: int = Field(2, ge=1, description="Warn when val loss rises this many epochs while train falls.")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Also save a resumable checkpoint every N steps (default: each epoch end)."
    )
    jit_compile: bool | Literal["auto"] = Field(
        "auto",
        description="XLA compilation of the train step. auto: on for GPU/TPU, off on CPU (measured slower "
        "there: see scripts/bench_train.py).",
    )
    steps_per_execution: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_batch_size(self):
        if self.per_replica_batch_size is not None and "batch_size" in self.model_fields_set:
            raise ValueError("set either training.batch_size (global) or training.per_replica_batch_size, not both")
        return self

    def global_batch_size(self, replicas: int) -> int:
        if self.per_replica_batch_size is not None:
            return self.per_replica_batch_size * replicas
        return self.batch_size


class DistributeConfig(Section):
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    mixed_precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"
