"""Freeze strategies as data: `freeze.strategy` -> the stages of a run, each from its first epoch on.

TF-free (config checks import it): which units a stage trains is applied to a backbone by tfsft.freezing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tfsft.config import FreezeConfig

TrainableUnits = int | str


@dataclass(frozen=True)
class Stage:
    trainable_units: TrainableUnits
    lr_factor: float = 1.0

    def describe(self, total: int) -> str:
        if self.trainable_units == "all":
            return f"whole backbone trainable ({total} units + stem)"
        if self.trainable_units == 0:
            return "backbone frozen (head only)"
        return f"top {self.trainable_units} of {total} backbone units trainable"


def _whole_backbone(cfg: FreezeConfig) -> list[tuple[int, Stage]]:
    return [(0, Stage("all"))]


def _head_only(cfg: FreezeConfig) -> list[tuple[int, Stage]]:
    return [(0, Stage(0))]


def _last_n(cfg: FreezeConfig) -> list[tuple[int, Stage]]:
    return [(0, Stage(cfg.last_n))]


def _gradual(cfg: FreezeConfig) -> list[tuple[int, Stage]]:
    return [(s.epoch, Stage(s.trainable_units, s.lr_factor)) for s in cfg.schedule]


# freeze.strategy -> its stages. The one place a strategy name is read: a new strategy is a function here plus its
# name in FreezeConfig.strategy (tests/test_learning_rate.py checks the two agree).
STRATEGIES = {"none": _whole_backbone, "backbone": _head_only, "last_n": _last_n, "gradual": _gradual}


def stages_for(cfg: FreezeConfig) -> list[tuple[int, Stage]]:
    """The stages of `cfg.strategy` as (first epoch, stage), in epoch order, the first at epoch 0."""
    return STRATEGIES[cfg.strategy](cfg)
