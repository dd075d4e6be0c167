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
import math
import re
from dataclasses import dataclass, field

import keras

from tfsft.config import FreezeConfig
from tfsft.freeze_stages import Stage, stages_for
from tfsft.keras_internals import flatten_layers
from tfsft.learning_rate import attach, set_stage, unit_multiplier

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
        key = (
            groups["stage"]
            if granularity == "stage" or "block" not in groups
            else f"{groups['stage']}_block{groups['block']}"
        )
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


class FreezePlan:
    """The stages of one run (computed once, from `freeze`) and the backbone they apply to.

    `enter(epoch)` applies the epoch's stage when it differs from the one applied. `current_index` and
    `current_stage` are what the other callbacks read (the stage scalar, the stage's LR factor)."""

    def __init__(self, cfg: FreezeConfig, backbone: keras.Model, unused_layers: tuple = (), pretrained: bool = True):
        self.cfg = cfg
        self.backbone = backbone
        # Pretrained statistics are worth keeping; a randomly initialised network needs its BatchNorm to learn.
        self.train_batchnorm = (not pretrained) if cfg.train_batchnorm == "auto" else cfg.train_batchnorm
        # Layers whose output the head ignores (e.g. BERT's pooler under mean pooling) get no gradient: keep
        # them frozen so the optimizer neither warns nor decays them.
        self.unused_layers = [backbone.get_layer(name) for name in unused_layers]
        self.units = backbone_units(backbone, cfg.granularity)
        starts_and_stages = stages_for(cfg)
        self.starts = [start for start, _ in starts_and_stages]
        self.stages = [stage for _, stage in starts_and_stages]
        self.current_index: int | None = None  # the stage entered last (None before the first)
        self._applied: Stage | None = None  # the trainable set on the backbone now

    def stage_index(self, epoch: int) -> int:
        return sum(1 for start in self.starts if start <= epoch) - 1

    def stage_for_epoch(self, epoch: int) -> Stage:
        return self.stages[self.stage_index(epoch)]

    @property
    def current_stage(self) -> Stage:
        return self.stages[self.current_index or 0]

    @property
    def final_stage(self) -> Stage:
        """The last stage: with every built-in strategy the one that trains the most (optimizer slots for it)."""
        return self.stages[-1]

    def enter(self, epoch: int) -> Stage | None:
        """Make `epoch`'s stage current; returns it when it changed (None when it already was current)."""
        index = self.stage_index(epoch)
        if index == self.current_index:
            return None
        self.current_index = index
        if self.stages[index] != self._applied:
            self.apply(self.stages[index])
        return self.stages[index]

    def start(self, model: keras.Model, optimizer) -> None:
        """Before the first `fit`: optimizer slots for every variable any stage trains (so later stages can train),
        then stage 0 entered and the optimizer given its learning-rate terms (tfsft.learning_rate)."""
        self.apply(self.final_stage)
        optimizer.build(model.trainable_variables)
        self.enter(0)  # applies stage 0 only if it differs from the final stage; a resumed run enters its own later
        attach(optimizer, self)

    @property
    def blocks(self) -> list[Unit]:
        """The units that `trainable_units` counts: everything but the stem."""
        return self.units[1:] if self.units and self.units[0].name == "stem" else self.units

    def apply(self, stage: Stage) -> None:
        """Set `trainable` on every backbone layer for this stage (`enter` is how a run changes stage)."""
        self._applied = stage
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
        return flatten_layers(self.backbone)

    def summary(self, model: keras.Model) -> str:
        def count(weights):  # from the shapes: reading each weight's values took 0.15 s for MiniLM-L6
            return int(sum(math.prod(w.shape) for w in weights))

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
            depth = len(self.units) - self.units.index(unit)
            lr = f"  LR x{unit_multiplier(self.cfg, depth):.3g}" if self.cfg.layerwise_lr_decay != 1.0 else ""
            lines.append(f"  {unit.name:<28} params={count(weights):>11,}  trainable={n_train:>11,}{lr}")
        return "\n".join(lines)


class FreezingCallback(keras.callbacks.Callback):
    """Enters the plan's stage at each epoch start: trainable set, the stage's LR factor, a new train step.

    Stage 0 is entered by the trainer before `fit`; a resumed run enters the stage of its first epoch here."""

    def __init__(self, plan: FreezePlan):
        super().__init__()
        self.plan = plan

    def on_epoch_begin(self, epoch, logs=None):
        stage = self.plan.enter(epoch)
        if stage is None:
            return
        set_stage(self.model.optimizer, stage)
        # The train step captures the trainable variables when traced: trace it anew for the new set.
        self.model.make_train_function(force=True)
        message = (
            f"Epoch {epoch + 1}: freezing stage {self.plan.current_index}: "
            f"{stage.describe(len(self.plan.blocks))}, LR factor {stage.lr_factor}"
        )
        print(message, flush=True)  # once: the log would repeat it on the same terminal
