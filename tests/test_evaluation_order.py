"""Forward passes outside training run on length-sorted text batches and answer exactly as in file order."""

import csv
import random

import numpy as np
import pytest

from conftest import NEGATIVE, NEUTRAL, POSITIVE, TINY_BERT, text_config, validated, write_csv
from tfsft import evaluation


def spread_texts(n: int, seed: int) -> list[tuple[str, str]]:
    """Keyword-sentiment sentences of 1 to 40 words in shuffled order: file order mixes short and long texts."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(0, 39))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture
def text_model(tmp_path):
    """An untrained tiny BERT classifier (distinct logits per text) and its modality, and 50 spread texts."""
    from tfsft.data import Records
    from tfsft.modalities import get_modality
    from tfsft.model import build_model

    config = validated(
        {
            "name": "x",
            "task": {"modality": "text", "type": "classification"},
            "data": {"train": "unused.csv"},
            "text": {"vocabulary": "learn", "max_length": 64},
            "model": {"backbone": TINY_BERT},
        }
    )
    rows = spread_texts(50, 3)
    records = Records({"text": [t for t, _ in rows]}, [label for _, label in rows], list(range(2, 52)), "inline")
    modality = get_modality(config)
    modality.prepare(records, tmp_path)
    model = build_model(config, modality, modality.backbone(), 2)
    targets = np.eye(2, dtype=np.float32)[[int(label == "positive") for label in records.labels]]
    return model, modality, records, targets


def token_lengths(modality, records) -> np.ndarray:
    import tensorflow as tf

    mask = modality.tokenize({"text": tf.constant(records.inputs["text"])})["padding_mask"]
    return np.asarray(mask).sum(axis=1)


def test_sorted_predictions_equal_file_order_predictions_per_record(text_model, monkeypatch):
    model, modality, records, targets = text_model
    lengths = token_lengths(modality, records)
    order = modality.evaluation_order(records)
    assert sorted(order) == list(range(len(records)))
    assert np.all(np.diff(lengths[order]) >= 0) and not np.array_equal(order, np.arange(len(records)))

    sorted_logits = evaluation.predict_logits(model, modality, records, targets, batch_size=8)
    monkeypatch.setattr(evaluation, "_SORTED", False)
    file_order_logits = evaluation.predict_logits(model, modality, records, targets, batch_size=8)
    # The texts get distinct logits, so outputs left in sorted order would not match.
    assert np.ptp(file_order_logits[:, 0]) > 1e-3
    np.testing.assert_allclose(sorted_logits, file_order_logits, atol=1e-5)


def test_sorted_batches_carry_less_padding(text_model, monkeypatch):
    model, modality, records, targets = text_model

    def positions():
        dataset, _ = evaluation.evaluation_dataset(modality, records, targets, batch_size=8)
        return sum(int(np.prod(x["token_ids"].shape)) for x, _ in dataset)

    sorted_positions = positions()
    monkeypatch.setattr(evaluation, "_SORTED", False)
    assert sorted_positions < 0.75 * positions()


def test_blocks_keep_the_records_of_each_run_of_batches(text_model):
    _, modality, records, _ = text_model
    lengths = token_lengths(modality, records)
    order = modality.evaluation_order(records, block=16)
    for start in range(0, len(records), 16):
        run = order[start : start + 16]
        assert sorted(run) == list(range(start, min(start + 16, len(records))))
        assert np.all(np.diff(lengths[run]) >= 0)


@pytest.mark.parametrize("block", [None, 16])
@pytest.mark.parametrize("in_pipeline", [True, False])
def test_validation_batches_are_the_evaluation_batches_sorted_inside_the_pipeline(
    text_model, monkeypatch, block, in_pipeline
):
    from tfsft.modalities import text

    _, modality, records, targets = text_model
    if not in_pipeline:
        monkeypatch.setattr(text, "IN_PIPELINE_SORT_LIMIT", 10)  # fewer than the 50 records: Python order
    expected, _ = evaluation.evaluation_dataset(modality, records, targets, batch_size=8, steps=block and block // 8)
    got = evaluation.validation_batches(modality, records, targets, batch_size=8, steps=block and block // 8)
    expected_batches, got_batches = list(expected), list(got)
    assert len(got_batches) == len(expected_batches) == 7
    for (x, y), (x_expected, y_expected) in zip(got_batches, expected_batches):
        assert x.keys() == x_expected.keys()
        for name in x:
            np.testing.assert_array_equal(x[name], x_expected[name])
        np.testing.assert_array_equal(y, y_expected)
    # Sorted, not file order: the first batch holds the shortest texts (of the first block).
    first_batch_lengths = np.asarray(got_batches[0][0]["padding_mask"]).sum(axis=1)
    assert first_batch_lengths.max() < token_lengths(modality, records).max()


def test_images_are_evaluated_in_file_order(tmp_path, digit_data):
    from conftest import image_config
    from tfsft.data import BadRecords
    from tfsft.modalities import get_modality

    config = validated(image_config(digit_data, tmp_path))
    modality = get_modality(config)
    records = modality.read(digit_data["test"], BadRecords())
    assert np.array_equal(modality.evaluation_order(records), np.arange(len(records)))
    assert np.array_equal(modality.evaluation_order(records, block=8), np.arange(len(records)))


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_same_metrics(got, expected, where="metrics"):
    """Same keys and texts, numbers equal up to float summation order."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_same_metrics(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same_metrics(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-6), where
    else:
        assert got == expected, where


@pytest.mark.slow
def test_tiny_run_metrics_and_worst_examples_match_file_order_evaluation(tmp_path, monkeypatch):
    """metrics.json, worst examples and the validation metrics of fit equal those of a file-order evaluation."""
    from tfsft.trainer import fit_and_evaluate, prepare

    paths = {
        split: str(write_csv(tmp_path / f"{split}.csv", spread_texts(n, seed)))
        for split, n, seed in (("train", 192, 0), ("validation", 72, 1), ("test", 72, 2))
    }
    config = validated(
        text_config(
            paths,
            tmp_path,
            text={"max_length": 48},
            training={"epochs": 2, "early_stopping": {"enabled": False, "restore_best": False}},
        )
    )  # final weights = last epoch's
    trained = prepare(config)
    result = fit_and_evaluate(trained, verbose=0)
    run = result.run_dir
    model, modality, splits, targets = trained.model, trained.modality, trained.splits, trained.targets

    monkeypatch.setattr(evaluation, "_SORTED", False)
    out = tmp_path / "file_order"
    out.mkdir()
    file_order = evaluation.evaluate_records(
        model, modality, splits.test, targets["test"], config, splits.classes.names, out
    )
    assert_same_metrics(result.metrics["test"], file_order)
    expected_rows, got_rows = read_rows(out / "test_worst_examples.csv"), read_rows(run / "test_worst_examples.csv")
    assert [r["source_row"] for r in got_rows] == [r["source_row"] for r in expected_rows]
    assert [r["text"] for r in got_rows] == [r["text"] for r in expected_rows]

    # Validation inside fit: the last epoch's metrics (final weights) equal a file-order pass, whole or capped.
    file_order_ds = modality.dataset(splits.validation, targets["validation"], training=False, batch_size=32)
    expected = model.evaluate(file_order_ds, verbose=0, return_dict=True)
    for name, value in expected.items():
        assert result.history[-1][f"val_{name}"] == pytest.approx(value, abs=1e-5), name
    monkeypatch.setattr(evaluation, "_SORTED", True)
    capped, order = evaluation.evaluation_dataset(modality, splits.validation, targets["validation"], 32, steps=1)
    assert not np.array_equal(order, np.arange(len(order)))
    got = model.evaluate(capped, steps=1, verbose=0, return_dict=True)
    assert got == pytest.approx(model.evaluate(file_order_ds, steps=1, verbose=0, return_dict=True), abs=1e-5)
