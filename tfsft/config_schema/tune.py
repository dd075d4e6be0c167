"""Config sections of `python -m tfsft.tune`: the searched fields and the tuner.

Part of the run's schema (tfsft.config, where they are imported from); no TensorFlow or Keras import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tfsft.config_schema.base import Section
from tfsft.metric_direction import resolve_direction


# ----------------------------------------------------------------------------------------- tune
class TuneParameter(Section):
    """One searched config field. `when` makes it conditional: only tuned (and applied) while every named
    field holds one of the listed values, e.g. `freeze.last_n` only `when: {freeze.strategy: [last_n]}`."""

    type: Literal["float", "int", "choice"]
    min: float | None = None
    max: float | None = None
    sampling: Literal["linear", "log"] = "linear"
    step: float | None = Field(None, gt=0, description="int: step between values; float: optional grid step.")
    values: list[bool | int | float | str] | None = Field(None, min_length=1)
    when: dict[str, list[bool | int | float | str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self):
        if self.type == "choice":
            if not self.values or self.min is not None or self.max is not None:
                raise ValueError("a choice parameter needs `values` (a list) and no min/max")
        else:
            if self.min is None or self.max is None or self.values is not None:
                raise ValueError(f"a {self.type} parameter needs `min` and `max` and no `values`")
            if self.min >= self.max:
                raise ValueError(f"min ({self.min}) must be smaller than max ({self.max})")
            if self.sampling == "log" and self.min <= 0:
                raise ValueError(f"log sampling needs min > 0, got {self.min}")
            if self.type == "int" and (self.min != int(self.min) or self.max != int(self.max)):
                raise ValueError("an int parameter needs whole-number min and max")
        return self


class TuneConfig(Section):
    tuner: Literal["random", "bayesian", "hyperband", "grid"] = "random"
    objective: str = Field("val_loss", description="A validation metric logged in history, e.g. val_macro_f1.")
    direction: Literal["auto", "min", "max"] = Field("auto", description="auto: from the name (metric_direction.py).")
    max_trials: int = Field(10, ge=1, le=100_000)
    executions_per_trial: int = Field(1, ge=1, le=100, description="Trainings per trial (different seeds), averaged.")
    max_epochs: int | None = Field(
        None, ge=1, description="hyperband: the epoch budget of the longest trial (default training.epochs)."
    )
    hyperband_factor: int = Field(3, ge=2)
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed of the search (default: the run's seed).")
    isolate_trials: bool = Field(
        True,
        description="Train each trial in a fresh process: the search's memory stays "
        "flat (costs a TensorFlow import per trial).",
    )
    space: dict[str, TuneParameter] = Field(..., min_length=1, description="Dotted config field -> parameter.")

    def objective_direction(self) -> str:
        return resolve_direction(self.objective, self.direction)
