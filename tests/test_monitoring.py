"""Per-step monitoring: step scalars in TensorBoard and history_steps.csv, the applied learning rate, the progress
line without a terminal."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import run_cli, text_config, validated, write_config

PEAK, WARMUP, SPE, EPOCHS, BACKBONE_FACTOR, STAGE_FACTOR = 3e-3, 4, 8, 2, 0.5, 0.5


def closed_form_lr(step: int) -> float:
    """The linear schedule with warmup, for the update that made optimizer step `step` (1-based)."""
    k, total = step - 1, SPE * EPOCHS
    if k < WARMUP:
        return PEAK * (k + 1) / WARMUP
    return PEAK * (1.0 - (k - WARMUP) / (total - WARMUP))


def scalar_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TensorBoard event files in `folder`."""
    import tensorflow as tf

    found: dict[str, list] = {}
    for file in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                found.setdefault(value.tag, []).append((int(event.step), number))
    return found


@pytest.fixture(scope="module")
def logged_run(text_data, tmp_path_factory):
    """2 epochs x 8 steps, scalars every 2 steps, validation every 4; the backbone frozen in epoch 1, then
    trained at half the learning rate (stage) x 0.5 (discriminative factor)."""
    from tfsft.trainer import train

    tmp = tmp_path_factory.mktemp("monitor")
    config = text_config(
        text_data,
        tmp,
        schedule={"name": "linear", "warmup_steps": WARMUP},
        freeze={
            "strategy": "gradual",
            "backbone_lr_factor": BACKBONE_FACTOR,
            "schedule": [
                {"epoch": 0, "trainable_units": 0},
                {"epoch": 1, "trainable_units": "all", "lr_factor": STAGE_FACTOR},
            ],
        },
        logging={"every_steps": 2, "validate_every_steps": 4},
    )
    return train(validated(config), verbose=0)


def test_step_scalars_reach_tensorboard_and_csv(logged_run):
    run = logged_run.run_dir
    expected_steps = list(range(2, SPE * EPOCHS + 1, 2))
    events = scalar_events(run / "logs" / "train_steps")
    for tag in ("loss", "learning_rate/head", "learning_rate/backbone", "gradient_norm", "examples_per_second"):
        assert [s for s, _ in events[tag]] == expected_steps, tag
    with open(run / "history_steps.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    train_rows = [r for r in rows if r["loss"]]
    assert [int(r["step"]) for r in train_rows] == expected_steps
    assert all(float(r["gradient_norm"]) > 0 and float(r["examples_per_second"]) > 0 for r in train_rows)
    # The loss fell from the first logged interval to the last (the keyword task is learnable in a few steps).
    assert float(train_rows[-1]["loss"]) < float(train_rows[0]["loss"])
    # Validation: in-epoch at steps 4 and 12, at each epoch end (8, 16); TensorBoard shows the same points.
    val_steps = [int(r["step"]) for r in rows if r["val_loss"]]
    assert all(r["val_accuracy"] and r["val_macro_f1"] for r in rows if r["val_loss"])
    assert val_steps == [4, 8, 12, 16]
    assert [s for s, _ in scalar_events(run / "logs" / "validation_steps")["loss"]] == val_steps
    # The epoch-end validation row repeats the epoch's val_loss from the epoch history (same evaluation).
    epoch_end = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    assert epoch_end[8] == pytest.approx(logged_run.history[0]["val_loss"], rel=1e-5)
    assert (run / "plots" / "history.png").stat().st_size > 10_000


def test_applied_learning_rate_is_the_closed_form_schedule_times_factors(logged_run):
    events = scalar_events(logged_run.run_dir / "logs" / "train_steps")
    for step, head in events["learning_rate/head"]:
        stage = 1.0 if step <= SPE else STAGE_FACTOR
        assert head == pytest.approx(closed_form_lr(step) * stage, rel=1e-5), step
    for step, backbone in events["learning_rate/backbone"]:
        # Frozen in the first epoch: the backbone receives no update at all.
        expected = 0.0 if step <= SPE else closed_form_lr(step) * STAGE_FACTOR * BACKBONE_FACTOR
        assert backbone == pytest.approx(expected, rel=1e-5, abs=1e-12), step


def test_progress_lines_without_a_terminal(text_data, tmp_path):
    """Captured stdout is not a TTY: lines with step, loss, LR, ex/s and ETA appear during the epoch."""
    config = text_config(
        text_data,
        tmp_path,
        training={"epochs": 1, "batch_size": 16, "early_stopping": {"enabled": False}},
        # Steps only: on a busy machine the first (tracing) step alone can outlast a time interval.
        logging={"progress": {"every_steps": 4, "every_seconds": 3600}},
    )
    result = run_cli("tfsft.train", "--config", str(write_config(tmp_path, config)))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines][:4] == ["4/16", "8/16", "12/16", "16/16"]
    assert all(all(word in line for word in ("loss", "lr", "ex/s", "ETA")) for line in lines)
    # During the epoch: the first line comes before Keras's end-of-epoch summary line.
    assert result.stdout.index(lines[0]) < result.stdout.index("val_loss"), result.stdout


def test_lr_find_suggests_a_rate_inside_its_sweep_and_leaves_no_run_directory(text_data, tmp_path):
    import yaml

    config = text_config(text_data, tmp_path)
    output = tmp_path / "lr_test"
    result = run_cli(
        "tfsft.lr_find",
        "--config",
        str(write_config(tmp_path, config)),
        "--output",
        str(output),
        "--start",
        "1e-5",
        "--end",
        "10",
        "--steps",
        "40",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    suggested = float(result.stdout.split("Suggested learning rate (valley rule): ")[1].split()[0])
    with open(output / "lr_find.csv", newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    swept = [row["learning_rate"] for row in rows]
    assert swept[0] == pytest.approx(1e-5) and swept == sorted(swept) and len(rows) >= 10
    assert min(swept) <= suggested <= max(swept)
    # At the suggestion the smoothed loss is below where the sweep started: the model was learning there.
    at = min(rows, key=lambda row: abs(row["learning_rate"] - suggested))
    assert at["smoothed_loss"] < rows[0]["smoothed_loss"]
    override = yaml.safe_load((output / "lr_override.yaml").read_text())
    assert override == {"optimizer": {"learning_rate": pytest.approx(suggested, rel=1e-2)}}
    assert (output / "lr_find.png").stat().st_size > 10_000
    assert not (tmp_path / "runs").exists()  # output_dir untouched: no run directory
