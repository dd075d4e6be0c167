"""Config sections of what a run produces and reports: evaluation, export, step logging and progress, experiment
tracking.

Part of the run's schema (tfsft.config, where they are imported from); no TensorFlow or Keras import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tfsft.config_schema.base import Section


class EvaluationConfig(Section):
    worst_examples: int = Field(50, ge=0, description="Rows in worst_examples.csv.")
    multilabel_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    calibrate: Literal["none", "temperature"] = Field(
        "none",
        description="temperature: fit a temperature on the validation split after training (one per label "
        "for multilabel); reported and baked into the exported probabilities.",
    )


class ExportConfig(Section):
    enabled: bool = Field(False, description="Export a TF Serving SavedModel at the end of training.")
    base_path: str = "saved_models"
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Model name (default: run name).")


# ----------------------------------------------------------------------------------------- monitoring
class ProgressConfig(Section):
    """The progress line printed when stdout is not a terminal (job logs, CI, nohup); a terminal gets Keras's bar."""

    enabled: bool | Literal["auto"] = Field("auto", description="auto: only when stdout is not a TTY.")
    every_steps: int | None = Field(None, ge=1, description="A line every N steps (default: by time only).")
    every_seconds: float = Field(30.0, gt=0.0, description="A line at least every M seconds.")


class LoggingConfig(Section):
    every_steps: int | Literal["auto"] = Field(
        "auto",
        description="Per-step scalars every N optimizer steps. auto: 50 points per epoch (every 5 steps of "
        "the quickstart's 250-step epoch).",
    )
    validate_every_steps: int | None = Field(
        None, ge=1, description="Also validate every N steps (default: at each epoch end only)."
    )
    gradient_norm: bool = Field(True, description="Log the global gradient norm before clipping.")
    progress: ProgressConfig = ProgressConfig()

    @model_validator(mode="after")
    def _positive(self):
        if isinstance(self.every_steps, int) and self.every_steps < 1:
            raise ValueError(f"logging.every_steps must be >= 1 or 'auto', got {self.every_steps}")
        return self

    def interval(self, steps_per_epoch: int) -> int:
        return max(1, steps_per_epoch // 50) if self.every_steps == "auto" else int(self.every_steps)


class WandbConfig(Section):
    project: str = "tfsft"
    entity: str | None = None
    mode: Literal["online", "offline"] = "online"
    tags: list[str] = Field(default_factory=list)
    dir: str | None = Field(None, description="Where W&B writes its files (default: the run directory).")
    group: str | None = Field(None, description="Run group (a tuning search sets it for its trials).")


class MlflowConfig(Section):
    tracking_uri: str = Field("mlruns", description="A server URL, or a local folder (file store).")
    experiment: str | None = Field(None, description="Experiment name (default: the run's name).")
    log_model: bool = Field(True, description="Log the exported SavedModel as an artifact (with export.enabled).")
    parent_run_id: str | None = Field(None, description="Log as a child run of this run (tuning trials).")


class TrackingConfig(Section):
    wandb: WandbConfig | None = None
    mlflow: MlflowConfig | None = None
    required: bool = Field(
        True,
        description="A tracker that cannot start fails the run before training; false: "
        "a warning, and the run goes on without it.",
    )
