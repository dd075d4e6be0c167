"""The learning rate as the *update* sees it: weights move by exactly lr_effective x gradient (SGD) or
lr_effective x sign(gradient) (Adam's first step), with lr_effective = tfsft.learning_rate's formula.

These tests measure weights before and after a step; none reads tfsft's own `get_lr` back. Layer-wise LR decay is
measured the same way in tests/test_quality.py (test_layerwise_lr_decay_sets_each_units_learning_rate_...)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsft.config import FreezeConfig, OptimizerConfig
from tfsft.freeze_stages import STRATEGIES
from tfsft.freezing import FreezePlan, FreezingCallback
from tfsft.keras_internals import FusedAdamUpdate
from tfsft.learning_rate import WarmupDecay
from tfsft.optim import build_optimizer

LR = 0.05


def tiny_run(optimizer: dict, freeze: dict, lr: float = LR):
    """A 3-unit backbone (stem + two 'transformer layers') under a linear head, compiled like the trainer does."""
    keras.utils.set_random_seed(0)
    features = keras.Input((6,))
    h = keras.layers.Dense(5, activation="tanh", name="embeddings")(features)  # the stem
    for i in range(2):
        h = keras.layers.Dense(5, activation="tanh", name=f"transformer_layer_{i}")(h)
    backbone = keras.Model(features, h, name="backbone")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head_logits")(backbone(inputs)))
    plan = FreezePlan(FreezeConfig(**freeze), backbone)
    cfg = OptimizerConfig(**{"learning_rate": lr, "clip": {"mode": "none"}, **optimizer})
    opt = build_optimizer(cfg, WarmupDecay(lr, total_steps=100, decay="constant"), model)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plan.start(model, opt)
    return model, backbone, plan


BATCH = (np.random.RandomState(1).normal(size=(16, 6)).astype("float32"), np.random.RandomState(2).randint(0, 3, 16))


class StepProbe(keras.callbacks.Callback):
    """Per step: each trainable variable's gradient (same batch, same weights as the train step) and its move."""

    def __init__(self):
        super().__init__()
        self.steps: list[dict] = []

    def on_train_batch_begin(self, batch, logs=None):
        x, y = BATCH
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.model.loss(y, self.model(x, training=True))
        grads = tape.gradient(loss, variables)
        self._before = {v.path: (np.array(v.numpy()), np.array(g)) for v, g in zip(variables, grads)}
        self._all = {v.path: np.array(v.numpy()) for v in self.model.weights}

    def on_train_batch_end(self, batch, logs=None):
        moved = {v.path: self._all[v.path] - v.numpy() for v in self.model.weights}
        self.steps.append(
            {
                "grad": {p: g for p, (_, g) in self._before.items()},
                "weight": {p: w for p, (w, _) in self._before.items()},
                "moved": moved,
            }
        )


def fit(model, epochs: int = 1, plan: FreezePlan | None = None) -> StepProbe:
    """One step per epoch on BATCH; with `plan`, its stages are entered as in a run (FreezingCallback)."""
    probe = StepProbe()
    data = tf.data.Dataset.from_tensors(BATCH).repeat()
    callbacks = [FreezingCallback(plan)] if plan else []
    model.fit(data, epochs=epochs, steps_per_epoch=1, callbacks=[*callbacks, probe], verbose=0)
    return probe


def sgd_rate(step: dict, path: str, decay: float = 0.0) -> float:
    """The learning rate an SGD update used on `path`: its move over (gradient + decay x weight)."""
    g = step["grad"][path] + decay * step["weight"][path] if decay else step["grad"][path]
    big = np.abs(g) > 0.1 * np.abs(g).max()
    return float(np.median(step["moved"][path][big] / g[big]))


def adam_rate(step: dict, path: str) -> float:
    """The learning rate of Adam's first update: it moves each element by lr x g / (|g| + eps) ~ lr x sign(g)."""
    g, moved = step["grad"][path], step["moved"][path]
    big = np.abs(g) > 1e-3  # epsilon (1e-7) is negligible beside these
    np.testing.assert_allclose(np.sign(moved[big]), np.sign(g[big]))
    return float(np.median(np.abs(moved[big])))


def head_and_backbone(model, backbone):
    backbone_paths = {v.path for v in backbone.weights}
    kernels = [v.path for v in model.trainable_variables if v.path.endswith("kernel")]
    return ([p for p in kernels if p not in backbone_paths], [p for p in kernels if p in backbone_paths])


# ----------------------------------------------------------------------------------------- backbone_lr_factor
def test_backbone_lr_factor_moves_the_backbone_ten_times_less_for_the_same_gradient():
    model, backbone, _ = tiny_run({"name": "sgd", "momentum": 0.0, "weight_decay": 0.0}, {"backbone_lr_factor": 0.1})
    step = fit(model).steps[0]
    head, body = head_and_backbone(model, backbone)
    assert head and len(body) == 3
    for path in head:
        assert sgd_rate(step, path) == pytest.approx(LR, rel=1e-4), path
    for path in body:
        assert sgd_rate(step, path) == pytest.approx(0.1 * LR, rel=1e-4), path


def test_decoupled_weight_decay_runs_at_each_variables_own_rate():
    decay = 0.2
    model, backbone, _ = tiny_run({"name": "sgd", "momentum": 0.0, "weight_decay": decay}, {"backbone_lr_factor": 0.1})
    step = fit(model).steps[0]
    head, body = head_and_backbone(model, backbone)
    for path in head:  # w <- w - lr x decay x w - lr x g
        assert sgd_rate(step, path, decay) == pytest.approx(LR, rel=1e-4), path
    for path in body:
        assert sgd_rate(step, path, decay) == pytest.approx(0.1 * LR, rel=1e-4), path


def test_backbone_lr_factor_in_the_trainers_own_optimizer(tmp_path, text_data):
    """The same, through `prepare` (the wiring a run uses): a tiny BERT, SGD, factor 0.1."""
    from conftest import text_config, validated
    from tfsft.trainer import prepare

    lr = 0.5  # large steps: weight - step loses fewer of the step's digits to float32 rounding
    config = validated(
        text_config(
            text_data,
            tmp_path,
            optimizer={
                "name": "sgd",
                "learning_rate": lr,
                "momentum": 0.0,
                "weight_decay": 0.0,
                "clip": {"mode": "none"},
            },
            freeze={"backbone_lr_factor": 0.1},
        )
    )
    p = prepare(config, "never")
    x, y = next(iter(p.modality.dataset(p.splits.train, p.targets["train"], training=True, batch_size=32)))
    variables = p.model.trainable_variables
    with tf.GradientTape() as tape:
        loss = p.model.loss(y, p.model(x, training=True))
    grads = {
        v.path: tf.convert_to_tensor(g).numpy()
        for v, g in zip(variables, tape.gradient(loss, variables))
        if g is not None
    }
    before = {v.path: v.numpy() for v in variables}
    p.model.train_on_batch(x, y)
    step = {"grad": grads, "moved": {v.path: before[v.path] - v.numpy() for v in variables}}
    head = p.model.get_layer("head_logits").kernel.path
    query = next(v.path for v in p.backbone.weights if v.path in grads and "query" in v.path and "kernel" in v.path)
    assert sgd_rate(step, head) == pytest.approx(lr, rel=5e-3)
    assert sgd_rate(step, query) == pytest.approx(0.1 * lr, rel=5e-3)


# ----------------------------------------------------------------------------------------- gradual unfreezing
def test_gradual_unfreezing_stage_factor_scales_the_update_of_the_right_variables():
    schedule = [
        {"epoch": 0, "trainable_units": 0},
        {"epoch": 1, "trainable_units": 1, "lr_factor": 0.5},
        {"epoch": 2, "trainable_units": "all", "lr_factor": 0.25},
    ]
    model, backbone, plan = tiny_run(
        {"name": "sgd", "momentum": 0.0, "weight_decay": 0.0},
        {"strategy": "gradual", "schedule": schedule, "backbone_lr_factor": 0.5},
    )
    steps = fit(model, epochs=3, plan=plan).steps
    head = "head_logits/kernel"
    top, below = "transformer_layer_1/kernel", ["transformer_layer_0/kernel", "embeddings/kernel"]
    # Epoch 1: head only, at the peak rate; the backbone does not move.
    assert sgd_rate(steps[0], head) == pytest.approx(LR, rel=1e-4)
    assert all(not steps[0]["moved"][p].any() for p in [top, *below])
    # Epoch 2: the top unit joins; everything trains at half the rate, the backbone at half of that again.
    assert sgd_rate(steps[1], head) == pytest.approx(0.5 * LR, rel=1e-4)
    assert sgd_rate(steps[1], top) == pytest.approx(0.5 * 0.5 * LR, rel=1e-4)
    assert all(not steps[1]["moved"][p].any() for p in below)
    # Epoch 3: all of it, at a quarter.
    assert sgd_rate(steps[2], head) == pytest.approx(0.25 * LR, rel=1e-4)
    for path in [top, *below]:
        assert sgd_rate(steps[2], path) == pytest.approx(0.25 * 0.5 * LR, rel=1e-4), path


# ----------------------------------------------------------------------------------------- AdamW, fused
def test_first_adamw_step_moves_each_weight_by_its_learning_rate_times_the_gradients_sign():
    lr = 1e-3
    model, backbone, plan = tiny_run(
        {"name": "adamw", "weight_decay": 0.0},
        lr=lr,
        freeze={
            "strategy": "gradual",
            "backbone_lr_factor": 0.1,
            "schedule": [{"epoch": 0, "trainable_units": "all", "lr_factor": 0.5}],
        },
    )
    assert isinstance(model.optimizer, FusedAdamUpdate)  # the fused kernel (tests/test_fused_adam.py)
    step = fit(model, plan=plan).steps[0]
    head, body = head_and_backbone(model, backbone)
    for path in head:
        assert adam_rate(step, path) == pytest.approx(0.5 * lr, rel=1e-3), path
    for path in body:
        assert adam_rate(step, path) == pytest.approx(0.5 * 0.1 * lr, rel=1e-3), path


# ----------------------------------------------------------------------------------------- freeze plan
def test_every_freeze_strategy_the_config_accepts_has_its_stages():
    accepted = set(FreezeConfig.model_fields["strategy"].annotation.__args__)
    assert accepted == set(STRATEGIES)
    for name in accepted:
        stages = STRATEGIES[name](FreezeConfig(strategy=name))
        assert stages and stages[0][0] == 0, name


def test_stage_zero_is_applied_once_and_a_stage_change_once(monkeypatch):
    applied = []
    original = FreezePlan.apply
    monkeypatch.setattr(FreezePlan, "apply", lambda self, stage: (applied.append(stage), original(self, stage)))
    model, _, plan = tiny_run({"name": "sgd"}, {"strategy": "last_n", "last_n": 1})
    fit(model, epochs=2, plan=plan)
    assert len(applied) == 1  # at start (the final stage is stage 0); not again at epoch 1 or 2
    applied.clear()
    model, _, plan = tiny_run({"name": "sgd"}, {"strategy": "gradual"})  # default schedule: 3 stages
    assert len(applied) == 2  # the final stage (optimizer slots), then stage 0
    fit(model, epochs=3, plan=plan)
    assert len(applied) == 4 and [plan.stage_index(e) for e in range(3)] == [0, 1, 2]
