"""Experiment trackers: MLflow (local file store) and W&B (offline) receive the config, the per-step scalars and the
run's files; a tracker that cannot start is a clear error before training, or a warning when not required."""

from __future__ import annotations

import glob
import json
import struct
import sys
from pathlib import Path

import pytest

from conftest import run_cli, text_config, validated, write_config

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]')")
wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install -e '.[wandb]')")

STEPS = [2, 4, 6, 8]  # 1 epoch x 8 steps, scalars every 2


def wandb_records(run_file: Path):
    """The protobuf records of a W&B run file (`run-<id>.wandb`): a LevelDB-style log of 32 KiB blocks, each
    record split into FULL / FIRST / MIDDLE / LAST chunks behind a 7-byte header (crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (2, 3):
            pending = (b"" if kind == 2 else pending) + chunk
            continue
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending + chunk if kind == 4 else chunk)
        pending = b""
        yield record


def wandb_history(run_file: Path) -> list[dict]:
    rows = []
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


@pytest.fixture(scope="module")
def tracked_run(text_data, tmp_path_factory):
    from tfsft.trainer import train

    tmp = tmp_path_factory.mktemp("tracked")
    config = text_config(
        text_data,
        tmp,
        training={"epochs": 1, "early_stopping": {"enabled": False}},
        logging={"every_steps": 2},
        export={"enabled": True, "base_path": str(tmp / "saved_models")},
        tracking={
            "mlflow": {"tracking_uri": str(tmp / "mlruns"), "experiment": "tiny"},
            "wandb": {"project": "tiny", "mode": "offline", "dir": str(tmp / "wandb_files"), "tags": ["test"]},
        },
    )
    result = train(validated(config), verbose=0)
    return tmp, result


def test_mlflow_file_store_has_params_step_metrics_and_artifacts(tracked_run):
    from mlflow.tracking import MlflowClient

    from tfsft.config import MlflowConfig
    from tfsft.tracking import mlflow_uri

    tmp, result = tracked_run
    client = MlflowClient(tracking_uri=mlflow_uri(MlflowConfig(tracking_uri=str(tmp / "mlruns"))))
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.learning_rate"] == "0.003"
    assert run.data.params["model.backbone.architecture"] == "BertBackbone"
    assert run.data.tags["run_dir"] == str(result.run_dir)
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == STEPS
    assert [m.step for m in client.get_metric_history(run.info.run_id, "gradient_norm")] == STEPS
    assert [m.step for m in client.get_metric_history(run.info.run_id, "learning_rate")] == STEPS
    assert run.data.metrics["final/test.accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "history_steps.csv", "plots", "saved_model"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "saved_model"))
    assert (local / "saved_model.pb").exists()


def test_wandb_offline_run_folder_holds_the_same_metrics(tracked_run):
    tmp, result = tracked_run
    (run_file,) = glob.glob(str(tmp / "wandb_files" / "wandb" / "offline-run-*" / "run-*.wandb"))
    history = wandb_history(Path(run_file))
    step_rows = [row for row in history if "loss" in row]
    assert [row["_step"] for row in step_rows] == STEPS
    assert all(row["gradient_norm"] > 0 and row["learning_rate"] == pytest.approx(3e-3) for row in step_rows)
    # The same loss values as history_steps.csv.
    from tfsft.step_history import read_rows

    csv_loss = [r["loss"] for r in read_rows(result.run_dir / "history_steps.csv") if "loss" in r]
    assert [row["loss"] for row in step_rows] == pytest.approx(csv_loss, rel=1e-5)
    runs = [r.run for r in wandb_records(Path(run_file)) if r.WhichOneof("record_type") == "run"]
    config_keys = {item.key for item in runs[0].config.update}
    assert {"optimizer", "training", "model"} <= config_keys and list(runs[0].tags) == ["test"]
    files = Path(run_file).parent / "files"
    assert (files / "report.md").exists() and (files / "plots" / "history.png").exists()


def test_an_unreachable_tracker_fails_before_training(text_data, tmp_path):
    config = text_config(text_data, tmp_path, tracking={"mlflow": {"tracking_uri": "http://127.0.0.1:9"}})
    result = run_cli("tfsft.train", "--config", str(write_config(tmp_path, config)), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "tracking.mlflow could not start a run at http://127.0.0.1:9" in result.stderr
    assert "tracking.required: false" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_package_is_a_clear_error_or_a_warning(text_data, tmp_path, monkeypatch, capsys):
    from tfsft.errors import ConfigError
    from tfsft.tracking import start_trackers

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, as if not installed
    config = text_config(text_data, tmp_path, tracking={"wandb": {"mode": "offline"}})
    with pytest.raises(ConfigError, match=r"pip install 'tfsft\[wandb\]'"):
        start_trackers(validated(config))
    config["tracking"]["required"] = False
    assert not start_trackers(validated(config))
    assert "Training goes on without it" in capsys.readouterr().out


@pytest.mark.slow  # two trainings in a search
def test_tuning_trials_are_child_runs_and_one_wandb_group(text_data, tmp_path):
    from mlflow.tracking import MlflowClient

    from tfsft.config import MlflowConfig
    from tfsft.tracking import mlflow_uri
    from tfsft.tuning import run_search

    config = text_config(
        text_data,
        tmp_path,
        training={"epochs": 1, "steps_per_epoch": 2, "early_stopping": {"enabled": False}},
        tracking={
            "mlflow": {"tracking_uri": str(tmp_path / "mlruns"), "experiment": "search"},
            "wandb": {"mode": "offline", "dir": str(tmp_path / "wandb_files")},
        },
        tune={
            "objective": "val_loss",
            "max_trials": 2,
            "seed": 1,
            "isolate_trials": False,
            "space": {"optimizer.learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "sampling": "log"}},
        },
    )
    result = run_search(validated(config))
    client = MlflowClient(tracking_uri=mlflow_uri(MlflowConfig(tracking_uri=str(tmp_path / "mlruns"))))
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    (parent,) = [r for r in runs if "tfsft.search" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3 and parent.info.status == "FINISHED"
    # Each child run holds its trial's config: the searched learning rate, inside the space.
    assert all(1e-4 <= float(c.data.params["optimizer.learning_rate"]) <= 1e-2 for c in children)
    assert "results.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    groups = set()
    for run_file in glob.glob(str(tmp_path / "wandb_files" / "wandb" / "offline-run-*" / "run-*.wandb")):
        groups |= {r.run.run_group for r in wandb_records(Path(run_file)) if r.WhichOneof("record_type") == "run"}
    assert groups == {result.root.name}
