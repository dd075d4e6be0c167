"""Fine-tuning behaviour on tiny backbones: freezing, schedules, clipping, resume, early stopping, end to end."""

import json

import keras
import numpy as np
import pytest

from conftest import image_config, keyword_texts, text_config, validated, write_csv
from tfsft.callbacks import TrainingState
from tfsft.learning_rate import get_lr
from tfsft.runs import load_model_file, optimizer_state_skipped_quietly
from tfsft.trainer import fit_and_evaluate, prepare, train


class Crash(Exception):
    pass


class CrashAfterEpoch(keras.callbacks.Callback):
    """Simulates a crash right after the checkpoint of epoch `n` (1-based) was written."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.n:
            raise Crash(f"simulated crash after epoch {self.n}")


class Recorder(keras.callbacks.Callback):
    """Records the learning rate the optimizer will use for each step and the trainable set per epoch."""

    def __init__(self):
        super().__init__()
        self.lrs = {}
        self.trainable = {}

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.lrs[step] = float(get_lr(self.model.optimizer))

    def on_epoch_begin(self, epoch, logs=None):
        self.trainable[epoch] = {w.path for w in self.model.trainable_weights}


def snapshot(weights):
    return {w.path: np.array(w.numpy()) for w in weights}


def test_frozen_weights_and_batchnorm_statistics_do_not_move(tmp_path, digit_data):
    config = validated(
        image_config(
            digit_data,
            tmp_path,
            freeze={"strategy": "last_n", "last_n": 1, "train_batchnorm": False},
            training={"epochs": 1, "steps_per_epoch": 4},
        )
    )
    p = prepare(config)
    blocks = p.plan.blocks
    top_unit, frozen_units = blocks[-1], [p.plan.units[0], *blocks[:-1]]
    before = snapshot(p.model.weights)
    fit_and_evaluate(p, verbose=0)
    after = snapshot(p.model.weights)

    frozen_paths = [w.path for unit in frozen_units for w in unit.weights()]
    assert frozen_paths
    for path in frozen_paths:
        np.testing.assert_array_equal(before[path], after[path], err_msg=f"frozen {path} moved")
    top_moved = [w.path for w in top_unit.weights() if not np.array_equal(before[w.path], after[w.path])]
    top_kernels = [w.path for w in top_unit.weights() if w.path.endswith("kernel")]
    assert set(top_kernels) <= set(top_moved), "trainable top-unit kernels did not move"
    stats = [w.path for w in top_unit.weights() if "moving" in w.path]
    assert stats, "expected BatchNorm moving statistics in the top unit"
    for path in stats:  # BatchNorm stays in inference mode by default even in the unfrozen unit
        np.testing.assert_array_equal(before[path], after[path])
    head = [w.path for w in p.model.weights if w.path.startswith("head_logits")]
    assert all(not np.array_equal(before[h], after[h]) for h in head)


def test_train_batchnorm_option_updates_statistics_of_unfrozen_units(tmp_path, digit_data):
    config = validated(
        image_config(
            digit_data,
            tmp_path,
            freeze={"strategy": "none", "train_batchnorm": True},
            training={"epochs": 1, "steps_per_epoch": 2},
        )
    )
    p = prepare(config)
    stats = [w for w in p.backbone.weights if "moving_mean" in w.path]
    before = snapshot(stats)
    fit_and_evaluate(p, verbose=0)
    assert any(not np.array_equal(before[w.path], w.numpy()) for w in stats)


def test_gradual_unfreezing_follows_schedule_and_survives_resume(tmp_path, digit_data):
    schedule = [
        {"epoch": 0, "trainable_units": 0},
        {"epoch": 1, "trainable_units": 1, "lr_factor": 0.5},
        {"epoch": 2, "trainable_units": "all", "lr_factor": 0.25},
    ]
    config = validated(
        image_config(
            digit_data,
            tmp_path,
            freeze={"strategy": "gradual", "schedule": schedule},
            training={"epochs": 3, "steps_per_epoch": 2},
        )
    )
    first = Recorder()
    with pytest.raises(Crash):
        train(config, verbose=0, callbacks=[first, CrashAfterEpoch(2)])
    p = prepare(config)  # same config: resumes the unfinished run
    assert p.run.resumed
    second = Recorder()
    result = fit_and_evaluate(p, verbose=0, callbacks=[second])

    backbone_paths = {w.path for w in p.backbone.weights}
    head_only = first.trainable[0]
    assert head_only and not head_only & backbone_paths
    top_one = first.trainable[1] & backbone_paths
    everything = second.trainable[2] & backbone_paths
    assert top_one and top_one < everything
    assert {w.path for w in p.plan.blocks[-1].weights() if w.trainable or "kernel" in w.path} >= {
        path for path in top_one if "kernel" in path
    }
    assert list(second.trainable) == [2], "the resumed run must start at epoch 3"
    stages = [epoch["freezing_stage"] for epoch in result.history]
    assert stages == [0.0, 1.0, 2.0]
    # The stage's LR factor is applied on resume too.
    steps = config.training.steps_per_epoch
    assert second.lrs[2 * steps] == pytest.approx(config.optimizer.learning_rate * 0.25)
    assert first.lrs[steps] == pytest.approx(config.optimizer.learning_rate * 0.5)


def expected_lr(step, peak, total, warmup, floor):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * progress)))


def test_learning_rate_follows_warmup_then_cosine_across_resume(tmp_path, text_data):
    peak, steps, epochs, warmup, floor = 2e-3, 4, 3, 3, 0.1
    config = validated(
        text_config(
            text_data,
            tmp_path,
            optimizer={"learning_rate": peak},
            schedule={"name": "cosine", "warmup_steps": warmup, "min_lr_ratio": floor},
            training={"epochs": epochs, "steps_per_epoch": steps},
        )
    )
    first, second = Recorder(), Recorder()
    with pytest.raises(Crash):
        train(config, verbose=0, callbacks=[first, CrashAfterEpoch(1)])
    train(config, verbose=0, callbacks=[second])
    assert sorted(first.lrs) == list(range(steps))
    assert sorted(second.lrs) == list(range(steps, steps * epochs))
    seen = {**first.lrs, **second.lrs}
    for step, lr in seen.items():
        assert lr == pytest.approx(expected_lr(step, peak, steps * epochs, warmup, floor), rel=1e-5), step
    assert seen[0] < seen[1] < seen[2] == pytest.approx(peak)  # warmup rises to the peak
    assert all(seen[s] > seen[s + 1] for s in range(warmup, steps * epochs - 1))  # then decays


def _update_norm(tmp_path, digit_data, clip):
    config = validated(
        image_config(
            digit_data,
            tmp_path,
            name=f"clip_{clip['mode']}",
            optimizer={"name": "sgd", "learning_rate": 1.0, "momentum": 0.0, "weight_decay": 0.0, "clip": clip},
        )
    )
    p = prepare(config)
    images, targets = next(iter(p.modality.dataset(p.splits.train, p.targets["train"], True, 16)))
    variables = p.model.trainable_variables
    before = [np.array(v.numpy()) for v in variables]
    p.model.train_on_batch(images, targets)
    return float(np.sqrt(sum(np.sum((b - v.numpy()) ** 2) for b, v in zip(before, variables))))


def test_global_norm_clipping_bounds_the_update(tmp_path, digit_data):
    unclipped = _update_norm(tmp_path, digit_data, {"mode": "none"})
    clipped = _update_norm(tmp_path, digit_data, {"mode": "global_norm", "value": 0.01})
    assert unclipped > 0.05  # the gradient really is larger than the bound
    assert clipped == pytest.approx(0.01, rel=1e-3)  # SGD, lr 1: the update is the clipped gradient


def test_early_stopping_restores_best_weights(tmp_path):
    # Validation labels are the opposite of training labels: the better the model fits train, the worse val.
    flipped = [(text, "negative" if label == "positive" else "positive") for text, label in keyword_texts(64, 1)]
    data = {
        "train": str(write_csv(tmp_path / "train.csv", keyword_texts(256, 0))),
        "validation": str(write_csv(tmp_path / "validation.csv", flipped)),
        "test": str(write_csv(tmp_path / "test.csv", keyword_texts(64, 2))),
    }
    config = validated(
        text_config(
            data,
            tmp_path,
            training={
                "epochs": 6,
                "steps_per_epoch": 8,
                "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": 1, "restore_best": True},
            },
        )
    )
    result = train(config, verbose=0)
    history = result.history
    val_losses = [e["val_loss"] for e in history]
    best = int(np.argmin(val_losses))
    assert len(history) < 6, f"did not stop early: {val_losses}"
    assert len(history) - 1 - best == 2  # patience 1: stopped on the second epoch without improvement
    final = load_model_file(result.run_dir / "model.keras")
    best_model = load_model_file(result.run_dir / "model.keras")
    with optimizer_state_skipped_quietly():
        best_model.load_weights(result.run_dir / "checkpoints" / "best.weights.h5")
    for a, b in zip(final.weights, best_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert json.loads((result.run_dir / "status.json").read_text())["state"] == "completed"
    # The best weights are the model's only: the optimizer's slots are in the resumable checkpoint.
    import h5py

    with h5py.File(result.run_dir / "checkpoints" / "best.weights.h5") as best_file:
        stored: list[str] = []
        best_file.visit(stored.append)
    assert stored and not [name for name in stored if "optimizer" in name]


def test_text_end_to_end_learns_and_writes_the_run_directory(tmp_path, text_data):
    config = validated(text_config(text_data, tmp_path, training={"epochs": 3}))
    trained = prepare(config)
    result = fit_and_evaluate(trained, verbose=0)
    run = result.run_dir
    losses = [e["loss"] for e in result.history]
    assert losses[-1] < losses[0] * 0.7, losses
    assert result.metrics["test"]["accuracy"] >= 0.9
    for name in (
        "config.yaml",
        "classes.json",
        "history.csv",
        "history.json",
        "metrics.json",
        "report.md",
        "model.keras",
        "backbone.weights.h5",
        "vocab.txt",
        "bad_records.csv",
        "test_worst_examples.csv",
        "plots/history.png",
        "plots/test_confusion_matrix.png",
    ):
        assert (run / name).exists(), name
    assert any((run / "logs").rglob("events.out.tfevents.*"))
    assert json.loads((run / "classes.json").read_text()) == ["negative", "positive"]
    report = (run / "report.md").read_text()
    assert "negative" in report and "positive" in report
    # The saved model reloads in Keras safe mode and answers like the model trained in memory, and unlike an
    # untrained one (so a save that lost the trained weights would fail here).
    reloaded = load_model_file(run / "model.keras")  # safe mode, as every tfsft command loads it
    batch, _ = next(iter(trained.modality.dataset(trained.splits.test, trained.targets["test"], False, 16)))
    expected = trained.model.predict(batch, verbose=0)
    np.testing.assert_allclose(reloaded.predict(batch, verbose=0), expected, atol=1e-5)
    untrained = prepare(validated({**config.to_dict(), "output_dir": str(tmp_path / "other")}), resume="never")
    assert np.abs(untrained.model.predict(batch, verbose=0) - expected).max() > 1e-2


def test_image_end_to_end_with_augmentation(tmp_path, digit_data):
    config = validated(
        image_config(
            digit_data,
            tmp_path,
            image={"augment": {"flip": "none", "rotation": 0.02, "crop_padding": 2, "mixup_alpha": 0.2}},
            training={"epochs": 8},
        )
    )
    result = train(config, verbose=0)
    # The training loss is measured on mixed-up targets and jumps with each epoch's mixing weights (seen: 0.62 then
    # 1.24 in consecutive epochs), so learning is judged on the un-augmented validation split instead.
    val_losses = [e["val_loss"] for e in result.history]
    assert min(val_losses[1:]) < 0.8 * val_losses[0]
    assert result.metrics["test"]["accuracy"] > 0.6  # 3 classes: chance is 0.33
    assert (result.run_dir / "plots" / "test_confusion_matrix.png").exists()


def test_state_best_respects_mode_and_min_delta(tmp_path):
    state = TrainingState(tmp_path / "h.json")
    for value in (0.5, 0.45, 0.449, 0.6):
        state.append({"val_loss": value, "val_accuracy": 1 - value})
    assert state.best("val_loss", "min") == (2, 0.449)
    assert state.best("val_loss", "min", min_delta=0.01) == (1, 0.45)
    assert state.best("val_accuracy", "max")[0] == 2
