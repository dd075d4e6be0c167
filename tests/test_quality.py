"""Fine-tuning quality recipes: pretrained anchors (L2-SP, feature anchor), layer-wise LR decay, temperature scaling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import (
    REPO,
    keyword_texts,
    saved_checkpoint_steps,
    saved_weights,
    text_config,
    validated,
    write_config,
    write_csv,
)
from tfsft import calibration
from tfsft.errors import ConfigError
from tfsft.freezing import Stage
from tfsft.learning_rate import set_stage
from tfsft.trainer import fit_and_evaluate, prepare, train


def sgd_config(text_data, tmp_path, name, lr=0.05, **overrides):
    # Plain SGD without momentum, decay or clipping: an update is exactly lr x multiplier x gradient.
    return text_config(
        text_data,
        tmp_path,
        name=name,
        optimizer={"name": "sgd", "learning_rate": lr, "momentum": 0.0, "weight_decay": 0.0, "clip": {"mode": "none"}},
        **overrides,
    )


NO_DATA = {"train": "x.csv", "validation": None, "test": None}  # config validation never reads the files


def anchor(kind="l2sp", alpha=0.01, beta=0.0) -> dict:
    return {"pretrained_anchor": {"kind": kind, "alpha": alpha, "beta": beta}}


# ----------------------------------------------------------------------------------------- anchors
def test_huge_alpha_keeps_the_backbone_at_w0_while_the_head_learns(tmp_path, text_data):
    deviations, head_moves = {}, {}
    # AdamW moves every weight by about its LR per step, whatever the gradient's size: with a huge alpha the anchor
    # term dominates each backbone gradient and turns every step away from w0 straight back, so the backbone only
    # jitters within ~one step (LR 3e-3 x backbone factor 0.1) of w0, while plain training drifts step after step.
    for name, regularization in (("plain", anchor("none")), ("anchored", anchor(alpha=1e4))):
        p = prepare(
            validated(
                text_config(
                    text_data,
                    tmp_path,
                    name=name,
                    regularization=regularization,
                    freeze={"backbone_lr_factor": 0.1},
                    training={"epochs": 2, "early_stopping": {"enabled": False}},
                    # Plain shuffled batches: the keyword texts' length follows their label, so length-grouped
                    # batches of this tiny split are near single-class and the head's updates partly cancel.
                    text={"length_grouping": 1},
                )
            ),
            "never",
        )
        w0 = [w.numpy() for w in p.backbone.trainable_weights]
        head0 = p.model.get_layer("head_logits").kernel.numpy()
        result = fit_and_evaluate(p, verbose=0)
        deviations[name] = max(float(np.max(np.abs(w.numpy() - a))) for w, a in zip(p.backbone.trainable_weights, w0))
        head_moves[name] = float(np.max(np.abs(p.model.get_layer("head_logits").kernel.numpy() - head0)))
        if name == "anchored":
            first, last = result.history[0], result.history[-1]
            assert first["loss_anchor"] > 0
            assert last["loss"] - last["loss_anchor"] < first["loss"] - first["loss_anchor"]  # the head learns
    assert deviations["anchored"] < 1e-3 and deviations["anchored"] < deviations["plain"] / 5, deviations
    assert head_moves["anchored"] > 30 * deviations["anchored"], (head_moves, deviations)


def test_alpha_zero_reproduces_plain_fine_tuning_bit_for_bit(tmp_path, text_data):
    # AdamW with weight decay: an anchor that switched decay off (or touched the loss) would change the weights.
    runs = {}
    for name, regularization in (("plain", anchor("none")), ("zero", anchor(alpha=0.0))):
        config = validated(
            text_config(
                text_data,
                tmp_path,
                name=name,
                regularization=regularization,
                training={"epochs": 1, "steps_per_epoch": 4, "early_stopping": {"enabled": False}},
            )
        )
        runs[name] = saved_weights(train(config, resume="never", verbose=0).run_dir)
    assert runs["plain"].keys() == runs["zero"].keys()
    for key, value in runs["plain"].items():
        assert np.array_equal(value, runs["zero"][key]), key


def test_feature_anchor_stays_out_of_checkpoints_and_the_saved_model(tmp_path, text_data):
    names = {}
    for name, regularization in (("plain", anchor("none")), ("features", anchor("features", alpha=1.0, beta=0.1))):
        config = validated(
            text_config(
                text_data,
                tmp_path,
                name=name,
                regularization=regularization,
                training={"epochs": 1, "steps_per_epoch": 3, "early_stopping": {"enabled": False}},
            )
        )
        result = train(config, resume="never", verbose=0)
        assert name == "plain" or result.history[0]["loss_anchor"] > 0
        checkpoint = tf.train.latest_checkpoint(str(result.run_dir / "checkpoints" / "last"))
        names[name] = ({n for n, _ in tf.train.list_variables(checkpoint)}, set(saved_weights(result.run_dir)))
    assert names["features"] == names["plain"]


@pytest.mark.parametrize("kind", ["l2sp", "features"])
def test_anchor_follows_gradual_unfreezing_under_mixed_precision_and_accumulation(tmp_path, text_data, kind):
    config = validated(
        text_config(
            text_data,
            tmp_path,
            name=kind,
            regularization=anchor(kind, alpha=1.0),
            freeze={
                "strategy": "gradual",
                "schedule": [{"epoch": 0, "trainable_units": 0}, {"epoch": 1, "trainable_units": "all"}],
            },
            distribute={"mixed_precision": "mixed_float16"},
            optimizer={"gradient_accumulation_steps": 2},
            training={"epochs": 2, "steps_per_epoch": 4, "early_stopping": {"enabled": False}},
        )
    )
    history = train(config, resume="never", verbose=0).history
    assert history[0]["loss_anchor"] == 0.0  # backbone frozen: nothing to anchor, nothing computed
    assert 0.0 < history[1]["loss_anchor"] < 1.0 and np.isfinite(history[1]["loss"])


def test_l2sp_config_is_validated():
    with pytest.raises(ConfigError, match="alpha"):
        validated(text_config(NO_DATA, Path("/tmp"), regularization=anchor(alpha=-1.0)))
    with pytest.raises(ConfigError, match="kind"):
        validated(text_config(NO_DATA, Path("/tmp"), regularization=anchor(kind="l3sp")))


@pytest.mark.slow
def test_anchor_after_sigkill_and_resume_is_the_original_pretrained_weights(tmp_path, text_data):
    alpha = 0.5
    config = sgd_config(
        text_data,
        tmp_path,
        "anchored",
        regularization=anchor(alpha=alpha),
        training={"epochs": 3, "batch_size": 16, "checkpoint_every_steps": 3, "early_stopping": {"enabled": False}},
    )
    path = write_config(tmp_path, config)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tfsft.train", "--config", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if [step for step in saved_checkpoint_steps(tmp_path / "runs") if step > 16]:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-way"

    # The original weights: what a fresh start builds before any training.
    fresh = prepare(validated({**config, "output_dir": str(tmp_path / "fresh")}), "never")
    w0 = [w.numpy() for w in fresh.backbone.trainable_weights]
    resumed = prepare(validated(config), "auto")
    assert resumed.run.resumed
    fit_and_evaluate(resumed, verbose=0)
    final = [w.numpy() for w in resumed.backbone.trainable_weights]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(final, w0)) > 1e-4  # training did move the weights
    expected = sum(0.5 * alpha * float(np.sum(np.square(a.astype(np.float64) - b))) for a, b in zip(final, w0))
    assert float(resumed.anchor.penalty(None)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["l2sp", "features"])
def test_anchor_under_mirrored_strategy_matches_one_device(tmp_path, text_data, kind):
    from test_distribute import (
        assert_same_training,
        distributed_config,
        finish,
        only_run,
        train_in_subprocess,
    )

    runs = {}
    for name, devices, strategy in (("single", 1, "default"), ("mirrored", 2, "mirrored")):
        raw = distributed_config(
            text_data,
            tmp_path,
            name,
            regularization=anchor(kind, alpha=0.5, beta=0.05),
            distribute={"strategy": strategy},
        )
        log = finish(train_in_subprocess(tmp_path, raw, devices=devices, tag=name))
        assert "Pretrained anchor" in log
        runs[name] = only_run(tmp_path / "runs", name)
    assert_same_training(runs["single"], runs["mirrored"])
    histories = [json.loads((runs[n] / "history.json").read_text()) for n in ("single", "mirrored")]
    histories = [h["epochs"] if isinstance(h, dict) else h for h in histories]
    for a, b in zip(*histories):
        assert a["loss_anchor"] > 0 and b["loss_anchor"] == pytest.approx(a["loss_anchor"], rel=1e-3)


# ----------------------------------------------------------------------------------------- layer-wise LR decay
def test_layerwise_lr_decay_sets_each_units_learning_rate_in_the_actual_update(tmp_path, text_data):
    lr, decay, factor, stage = 0.1, 0.5, 0.8, 0.5
    config = validated(
        sgd_config(
            text_data,
            tmp_path,
            "llrd",
            lr=lr,
            schedule={"name": "constant"},
            freeze={"layerwise_lr_decay": decay, "backbone_lr_factor": factor},
        )
    )
    p = prepare(config, "never")
    set_stage(p.model.optimizer, Stage("all", stage))  # what gradual unfreezing sets: it composes
    x, y = next(iter(p.modality.dataset(p.splits.train, p.targets["train"], training=True, batch_size=32)))
    variables = p.model.trainable_variables
    with tf.GradientTape() as tape:
        loss = p.model.loss(y, p.model(x, training=True))
    gradients = {id(v): g for v, g in zip(variables, tape.gradient(loss, variables)) if g is not None}
    before = {id(v): v.numpy() for v in variables}
    p.model.train_on_batch(x, y)

    def measured(v) -> float:
        g = tf.convert_to_tensor(gradients[id(v)]).numpy()
        step = before[id(v)] - v.numpy()
        big = np.abs(g) > 0.1 * np.abs(g).max()
        return float(np.median(step[big] / g[big])) / lr

    units = p.plan.units
    assert [u.name for u in units] == ["stem", "transformer_layer_0", "transformer_layer_1"]
    for depth, unit in enumerate(reversed(units), start=1):
        unit_vars = [v for v in unit.weights() if id(v) in gradients and np.abs(before[id(v)]).size > 1]
        assert unit_vars, unit.name
        for v in unit_vars[:3]:
            assert measured(v) == pytest.approx(stage * factor * decay**depth, rel=1e-3), (unit.name, v.path)
    assert measured(p.model.get_layer("head_logits").kernel) == pytest.approx(stage, rel=1e-3)


# ----------------------------------------------------------------------------------------- calibration
def over_confident(n=3000, classes=4, sharpen=6.0, seed=0):
    """Labels drawn from softmax(z); the 'model' reports softmax(6 z): right as often, far surer than it should be."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.0, size=(n, classes))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return sharpen * z, np.eye(classes)[labels]


def test_temperature_scaling_lowers_nll_of_an_over_confident_model_and_keeps_argmax():
    logits, targets = over_confident()
    temperature = calibration.fit_temperature("classification", logits, targets)
    assert temperature == pytest.approx(6.0, rel=0.15)
    summary = calibration.summarize("classification", logits, targets, temperature)
    assert summary["nll_after"] < 0.8 * summary["nll_before"]
    assert summary["ece_after"] < summary["ece_before"] / 3
    assert np.array_equal((logits / temperature).argmax(axis=1), logits.argmax(axis=1))


def test_multilabel_gets_one_temperature_per_label():
    logits, _ = over_confident(classes=2)
    # Label 0: over-confident by 6; label 1: the same evidence, honest.
    multi = np.stack([logits[:, 0], logits[:, 0] / 6.0], axis=1)
    rng = np.random.default_rng(1)
    y = (rng.random(len(multi)) < 1 / (1 + np.exp(-logits[:, 0] / 6.0))).astype(float)
    temperatures = calibration.fit_temperature("multilabel", multi, np.stack([y, y], axis=1))
    assert temperatures[0] == pytest.approx(6.0, rel=0.2) and temperatures[1] == pytest.approx(1.0, rel=0.2)


def test_expected_calibration_error_of_known_cases():
    targets = np.eye(2)[[0, 0, 1, 1]]
    perfect = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert calibration.expected_calibration_error("classification", perfect, targets) == 0.0
    # Always 90% sure, right half the time: ECE = |0.5 - 0.9| = 0.4.
    sure = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    assert calibration.expected_calibration_error("classification", sure, targets) == pytest.approx(0.4)


def test_calibrate_needs_class_probabilities_and_a_validation_split(tmp_path):
    with pytest.raises(ConfigError, match="regression"):
        validated(text_config(NO_DATA, tmp_path, task={"type": "regression"}, evaluation={"calibrate": "temperature"}))
    with pytest.raises(ConfigError, match="validation"):
        validated(
            text_config(NO_DATA, tmp_path, data={"split": {"validation": 0.0}}, evaluation={"calibrate": "temperature"})
        )


CLIENT = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = fn(text=tf.constant(json.loads(sys.argv[2])))
print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(),
                  "class_id": out["class_id"].numpy().tolist()}))
"""


@pytest.mark.slow
def test_calibrated_run_reports_and_exports_calibrated_probabilities(tmp_path, text_data):
    from tfsft.data import Records
    from tfsft.export import export_run
    from tfsft.modalities import get_modality
    from tfsft.runs import load_run

    # Every 4th validation/test label flipped: the fitted temperature moves well away from 1 (a model that is
    # always right would only be sharpened towards certainty, leaving nothing measurable to compare).
    noisy = dict(text_data)
    for split, seed in (("validation", 1), ("test", 2)):
        rows = [
            (text, {"positive": "negative", "negative": "positive"}[label] if i % 4 == 0 else label)
            for i, (text, label) in enumerate(keyword_texts(64, seed))
        ]
        noisy[split] = str(write_csv(tmp_path / f"noisy_{split}.csv", rows))
    config = validated(
        text_config(
            noisy,
            tmp_path,
            evaluation={"calibrate": "temperature"},
            optimizer={"learning_rate": 1e-2},
            training={"epochs": 4},
        )
    )
    run_dir = train(config, resume="never", verbose=0).run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fitted = metrics["calibration"]
    assert fitted["validation"]["nll_after"] <= fitted["validation"]["nll_before"]
    assert set(fitted["test"]) >= {"ece_before", "ece_after", "nll_before", "nll_after"}
    assert (run_dir / "plots" / "reliability.png").stat().st_size > 1000
    assert "## Calibration" in (run_dir / "report.md").read_text()
    temperature = fitted["temperature"]
    assert abs(temperature - 1.0) > 0.1, "the test needs a model that calibration changes"

    target = export_run(run_dir, tmp_path / "saved_models")
    texts = ["what a great wonderful crew", "the worst flight my bag is broken", "gate seat today happy"]
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, str(target), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])

    loaded_config, _, model = load_run(run_dir)
    modality = get_modality(loaded_config)
    records = Records({"text": texts}, ["positive"] * 3, [1, 2, 3], "inline")
    modality.prepare(records, run_dir)
    modality.use_model_inputs(model)
    batch, _ = next(iter(modality.dataset(records, np.zeros((3, 2), np.float32), False, 3)))
    logits = model.predict(batch, verbose=0).astype(np.float64)

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    np.testing.assert_allclose(served["probabilities"], softmax(logits / temperature), atol=1e-5)
    assert np.max(np.abs(np.array(served["probabilities"]) - softmax(logits))) > 1e-3
    assert served["class_id"] == logits.argmax(axis=1).tolist()
