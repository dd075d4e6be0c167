"""Task types and options beyond single-label classification: multilabel, regression, sentence pairs,
gradient accumulation, the NaN guard, and re-evaluating a finished run."""

import json
import random

import numpy as np
import pytest

from conftest import NEGATIVE, NEUTRAL, POSITIVE, keyword_texts, text_config, validated, write_csv
from tfsft.errors import TrainingAborted
from tfsft.evaluation import evaluate_finished_run
from tfsft.trainer import fit_and_evaluate, prepare, train


def multilabel_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        labels = [name for name in ("praise", "complaint") if rng.random() < 0.5] or ["none"]
        words = rng.sample(NEUTRAL, 4)
        if "praise" in labels:
            words.append(rng.choice(POSITIVE))
        if "complaint" in labels:
            words.append(rng.choice(NEGATIVE))
        rng.shuffle(words)
        rows.append((" ".join(words), "|".join(labels)))
    return rows


def test_multilabel_text(tmp_path):
    data = {
        split: str(write_csv(tmp_path / f"{split}.csv", multilabel_rows(n, seed)))
        for split, n, seed in (("train", 320, 0), ("validation", 64, 1), ("test", 64, 2))
    }
    # Plain shuffled batches: these texts' word count follows their labels (4 words, +1 per label), so length-grouped
    # batches of this tiny split would be near single-label (README: `text.length_grouping`).
    config = validated(
        text_config(data, tmp_path, task={"type": "multilabel"}, training={"epochs": 4}, text={"length_grouping": 1})
    )
    result = train(config, verbose=0)
    test = result.metrics["test"]
    assert test["class_names"] == ["complaint", "none", "praise"]
    assert test["micro_f1"] > 0.8 and test["macro_auc"] > 0.9
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_regression_text(tmp_path):
    def rows(n, seed):
        return [(text, 1.0 if label == "positive" else -1.0) for text, label in keyword_texts(n, seed)]

    data = {
        split: str(write_csv(tmp_path / f"{split}.csv", rows(n, seed)))
        for split, n, seed in (("train", 256, 0), ("validation", 64, 1), ("test", 64, 2))
    }
    config = validated(text_config(data, tmp_path, task={"type": "regression"}, training={"epochs": 3}))
    result = train(config, verbose=0)
    assert result.metrics["test"]["mae"] < 0.5
    assert json.loads((result.run_dir / "classes.json").read_text()) == []


def test_sentence_pairs_reach_the_model(tmp_path):
    rng = random.Random(0)

    def rows(n):
        out = []
        for i in range(n):
            same = i % 2 == 0
            a = rng.choice(POSITIVE)
            b = a if same else rng.choice([w for w in POSITIVE if w != a])
            out.append((f"the {a} flight", f"a {b} crew", "same" if same else "different"))
        return out

    data = {
        split: str(write_csv(tmp_path / f"{split}.csv", rows(n), header=("first", "second", "label")))
        for split, n in (("train", 256), ("validation", 64), ("test", 64))
    }
    config = validated(text_config(data, tmp_path, data={"text_column": "first", "text_pair_column": "second"}))
    p = prepare(config)
    features, _ = next(iter(p.modality.dataset(p.splits.train, p.targets["train"], False, 4)))
    segments = features["segment_ids"].numpy()
    assert (segments == 1).any(axis=1).all(), "the second text must be packed as segment 1"


def test_gradient_accumulation_updates_every_n_steps(tmp_path, text_data):
    config = validated(text_config(text_data, tmp_path, optimizer={"gradient_accumulation_steps": 2}))
    p = prepare(config)
    dataset = iter(p.modality.dataset(p.splits.train, p.targets["train"], True, 32))
    kernel = p.model.get_layer("head_logits").kernel
    values = [np.array(kernel.numpy())]
    for _ in range(4):
        x, y = next(dataset)
        p.model.train_on_batch(x, y)
        values.append(np.array(kernel.numpy()))
    moved = [not np.array_equal(a, b) for a, b in zip(values, values[1:])]
    assert moved == [False, True, False, True]


def test_nan_loss_stops_training_and_keeps_best_checkpoint(tmp_path):
    rows = [(text, 1e30) for text, _ in keyword_texts(128, 0)]
    data = {split: str(write_csv(tmp_path / f"{split}.csv", rows)) for split in ("train", "validation", "test")}
    config = validated(
        text_config(
            data, tmp_path, task={"type": "regression"}, optimizer={"clip": {"mode": "none"}}, training={"epochs": 3}
        )
    )
    p = prepare(config)
    with pytest.raises(TrainingAborted, match="NaN/Inf"):
        fit_and_evaluate(p, verbose=0)
    assert json.loads((p.run.path / "status.json").read_text())["state"] == "stopped_nan"
    assert not (p.run.path / "model.keras").exists()


def test_evaluate_cli_reevaluates_a_run_on_new_data(tmp_path, text_data, capsys):
    result = train(validated(text_config(text_data, tmp_path, training={"epochs": 3})), verbose=0)
    other = write_csv(tmp_path / "other.csv", keyword_texts(40, 7) + [("meh", "unknown-label")])
    metrics = evaluate_finished_run(result.run_dir, str(other))
    assert metrics["num_examples"] == 40  # the unknown label is skipped and counted
    assert metrics["accuracy"] >= 0.9
    folder = next((result.run_dir / "evaluations").iterdir())
    assert (folder / "metrics.json").exists() and (folder / "bad_records.csv").read_text().count("\n") == 2
    assert "accuracy=" in capsys.readouterr().out
