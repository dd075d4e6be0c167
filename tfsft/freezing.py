"""Freeze plans: which backbone units train at which epoch, as data, plus the callback that applies them.

A *unit* is a meaningful piece of a backbone, bottom to top: the stem/embeddings, then each residual
block (or stage) of a CNN or each transformer layer. `trainable_units = k` trains the top k units;
"all" trains everything including the stem. BatchNorm layers stay in inference mode (Keras 3 runs a
non-trainable BatchNormalization with its moving statistics) while frozen and, unless
`freeze.train_batchnorm`, after unfreezing too.

The stage is a pure function of the epoch, so a resumed run recomputes it from the restored epoch.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Union

import keras

from tfsft.config import FreezeConfig
from tfsft.optim import unwrapped

log = logging.getLogger(__name__)

# conv3_block2_1_conv (keras.applications), stack1_block0_add (KerasHub ResNet), transformer_layer_3 (KerasHub).
_BLOCK = re.compile(r"^(?P<stage>(?:conv|stack)\d+)_block(?P<block>\d+)_")
_TRANSFORMER = re.compile(r"^(?P<stage>transformer_layer_\d+)$")


@dataclass
class Unit:
    name: str
    layers: list = field(default_factory=list)

    def weights(self) -> list:
        return [w for layer in self.layers for w in layer.weights]


def backbone_units(backbone: keras.Model, granularity: str = "block") -> list[Unit]:
    """The backbone's units, bottom to top. The first is the stem; layers above the last block join it."""
    stem = Unit("stem")
    units: list[Unit] = []
    by_name: dict[str, Unit] = {}
    trailing: list = []
    for layer in backbone.layers:
        if not layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
            continue
        match = _BLOCK.match(layer.name) or _TRANSFORMER.match(layer.name)
        if match is None:
            (trailing if units else stem.layers).append(layer)
            continue
        groups = match.groupdict()
        key = groups["stage"] if granularity == "stage" or "block" not in groups else \
            f"{groups['stage']}_block{groups['block']}"
        if key not in by_name:
            by_name[key] = Unit(key)
            units.append(by_name[key])
        trailing_owner = by_name[key]
        trailing_owner.layers.extend(trailing)  # layers between blocks (rare) stay with the next block
        trailing = []
        trailing_owner.layers.append(layer)
    if not units:  # unknown architecture: every weighted layer is a unit
        return [Unit(layer.name, [layer]) for layer in stem.layers]
    units[-1].layers.extend(trailing)  # e.g. post_bn, pooled_dense: they belong to the top
    return [stem, *units] if stem.layers else units


TrainableUnits = Union[int, str]


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


class FreezePlan:
    def __init__(self, cfg: FreezeConfig, backbone: keras.Model, unused_layers: tuple = (), pretrained: bool = True):
        self.cfg = cfg
        self.backbone = backbone
        # Pretrained statistics are worth keeping; a randomly initialised network needs its BatchNorm to learn.
        self.train_batchnorm = (not pretrained) if cfg.train_batchnorm == "auto" else cfg.train_batchnorm
        # Layers whose output the head ignores (e.g. BERT's pooler under mean pooling) get no gradient: keep
        # them frozen so the optimizer neither warns nor decays them.
        self.unused_layers = [backbone.get_layer(name) for name in unused_layers]
        self.units = backbone_units(backbone, cfg.granularity)

    def stage_for_epoch(self, epoch: int) -> Stage:
        strategy = self.cfg.strategy
        if strategy == "none":
            return Stage("all")
        if strategy == "backbone":
            return Stage(0)
        if strategy == "last_n":
            return Stage(self.cfg.last_n)
        current = self.cfg.schedule[0]
        for stage in self.cfg.schedule:
            if stage.epoch <= epoch:
                current = stage
        return Stage(current.trainable_units, current.lr_factor)

    def stage_index(self, epoch: int) -> int:
        if self.cfg.strategy != "gradual":
            return 0
        return sum(1 for stage in self.cfg.schedule if stage.epoch <= epoch) - 1

    @property
    def blocks(self) -> list[Unit]:
        """The units that `trainable_units` counts: everything but the stem."""
        return self.units[1:] if self.units and self.units[0].name == "stem" else self.units

    def apply(self, stage: Stage) -> None:
        """Set `trainable` on every backbone layer for this stage."""
        # Setting `trainable` on the parent does not reliably reach sublayers frozen earlier: set each one.
        self.backbone.trainable = True
        for layer in self._all_layers():
            layer.trainable = True
        if stage.trainable_units == "all":
            frozen = []
        else:
            keep = min(int(stage.trainable_units), len(self.blocks))
            stem = self.units[:1] if self.blocks is not self.units else []
            frozen = stem + self.blocks[: len(self.blocks) - keep]
        for unit in frozen:
            for layer in unit.layers:
                layer.trainable = False
        for layer in self.unused_layers:
            layer.trainable = False
        if not self.train_batchnorm:
            for layer in self._all_layers():
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False

    def _all_layers(self):
        return self.backbone._flatten_layers(include_self=False, recursive=True)

    def backbone_lr_multipliers(self) -> list[tuple]:
        """(variable, LR multiplier) of each backbone variable: backbone_lr_factor x layerwise_lr_decay^depth.

        Depth counts from the top: the top unit has depth 1, the stem depth len(units) (ELECTRA/BEiT: the head is
        depth 0). Keras variables are not hashable, hence pairs rather than a dict."""
        factor, decay = self.cfg.backbone_lr_factor, self.cfg.layerwise_lr_decay
        if factor == 1.0 and decay == 1.0:
            return []
        multipliers = {id(w): (w, factor) for w in self.backbone.weights}
        if decay != 1.0:
            for depth, unit in enumerate(reversed(self.units), start=1):
                for w in unit.weights():
                    multipliers[id(w)] = (w, factor * decay ** depth)
        return list(multipliers.values())

    def unit_lr_multiplier(self, unit: Unit) -> float:
        depth = len(self.units) - self.units.index(unit)
        return self.cfg.backbone_lr_factor * self.cfg.layerwise_lr_decay ** depth

    def summary(self, model: keras.Model) -> str:
        def count(weights):
            return int(sum(w.numpy().size for w in weights))

        backbone_ids = {id(w) for w in self.backbone.weights}
        head_trainable = count([w for w in model.trainable_weights if id(w) not in backbone_ids])
        bb_trainable = count(self.backbone.trainable_weights)
        bb_frozen = count(self.backbone.non_trainable_weights)
        lines = [
            f"Parameters: head trainable={head_trainable:,}; backbone trainable={bb_trainable:,}, "
            f"frozen/non-trainable={bb_frozen:,}; total={count(model.weights):,}",
            f"Backbone units ({len(self.units)}, bottom to top):",
        ]
        trainable_ids = {id(w) for w in model.trainable_weights}
        for unit in self.units:
            weights = unit.weights()
            n_train = count([w for w in weights if id(w) in trainable_ids])
            lr = f"  LR x{self.unit_lr_multiplier(unit):.3g}" if self.cfg.layerwise_lr_decay != 1.0 else ""
            lines.append(f"  {unit.name:<28} params={count(weights):>11,}  trainable={n_train:>11,}{lr}")
        return "\n".join(lines)


class FreezingCallback(keras.callbacks.Callback):
    """Applies the plan's stage at each epoch start; rebuilds the train step when the trainable set changes."""

    def __init__(self, plan: FreezePlan, on_change=None):
        super().__init__()
        self.plan = plan
        self.current: Stage | None = None
        self.on_change = on_change

    def on_epoch_begin(self, epoch, logs=None):
        stage = self.plan.stage_for_epoch(epoch)
        if stage == self.current:
            return
        self.plan.apply(stage)
        unwrapped(self.model.optimizer).set_stage_factor(stage.lr_factor)
        # The train step captures the trainable variables when traced: trace it anew for the new set.
        self.model.make_train_function(force=True)
        self.current = stage
        message = f"Epoch {epoch + 1}: freezing stage {self.plan.stage_index(epoch)}: " \
                  f"{stage.describe(len(self.plan.blocks))}, LR factor {stage.lr_factor}"
        print(message, flush=True)  # once: the log would repeat it on the same terminal
        if self.on_change:
            self.on_change(epoch, stage)
