"""tfsft.reporting against small examples whose metrics are worked out by hand below."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from tfsft import reporting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["cat", "dog", "bird"]
# true:      cat  cat  dog  dog  bird bird
# predicted: cat  dog  dog  dog  bird cat
TRUE = [0, 0, 1, 1, 2, 2]
PROBS = np.array(
    [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.9, 0.08, 0.02]]
)
ONE_HOT = np.eye(3)[TRUE]


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_classification_metrics_match_hand_computation():
    m = reporting.compute_metrics("classification", ONE_HOT, PROBS, NAMES)
    json.dumps(m)  # must be JSON-serializable as is

    assert m["num_examples"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # cat: P=1/2 R=1/2; dog: P=2/3 R=1; bird: P=1 R=1/2.
    f1 = {"cat": 0.5, "dog": 2 * (2 / 3) * 1 / (2 / 3 + 1), "bird": 2 * 1 * 0.5 / 1.5}
    for name, expected in f1.items():
        assert m["per_class"][name]["f1"] == pytest.approx(expected)
        assert m["per_class"][name]["support"] == 2
    assert m["per_class"]["dog"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["bird"]["recall"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)  # ≈ 0.6556
    assert m["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["weighted_f1"] == pytest.approx(m["macro_f1"])  # equal supports
    # Only the last example (bird scored 0.02, ranked third) misses the top 2.
    assert m["top_2_accuracy"] == pytest.approx(5 / 6)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.5, 0.8, 0.02])))
    assert m["class_names"] == NAMES
    assert all(isinstance(m[k], float) for k in ("accuracy", "macro_f1", "weighted_recall", "log_loss"))


def test_classification_keeps_absent_classes_and_skips_top2_for_binary():
    m = reporting.compute_metrics("classification", np.eye(2)[[0, 0]], np.array([[0.9, 0.1], [0.8, 0.2]]), ["a", "b"])
    assert m["confusion_matrix"] == [[2, 0], [0, 0]]
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "top_2_accuracy" not in m


def test_multilabel_metrics():
    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    scores = np.array([[0.9, 0.2], [0.4, 0.7], [0.8, 0.3], [0.1, 0.6]])
    m = reporting.compute_metrics("multilabel", truth, scores, ["a", "b"])
    json.dumps(m)
    assert m["subset_accuracy"] == pytest.approx(0.5)
    assert m["hamming_loss"] == pytest.approx(2 / 8)
    # TP=3, FP=1 (row 4, b), FN=1 (row 3, b).
    assert m["micro_precision"] == pytest.approx(0.75) and m["micro_recall"] == pytest.approx(0.75)
    assert m["per_class"]["a"]["f1"] == pytest.approx(1.0)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(0.75)
    # AUC a = 1; b: positives 0.7, 0.3 vs negatives 0.2, 0.6 -> 3 of 4 pairs ordered.
    assert m["macro_auc"] == pytest.approx((1.0 + 0.75) / 2)
    assert m["threshold"] == 0.5
    # A higher threshold turns the 0.6 false positive off.
    assert reporting.compute_metrics("multilabel", truth, scores, ["a", "b"], threshold=0.65)[
        "hamming_loss"
    ] == pytest.approx(1 / 8)


def test_multilabel_auc_is_none_when_no_class_has_both_outcomes():
    m = reporting.compute_metrics("multilabel", np.ones((3, 2)), np.full((3, 2), 0.9), ["a", "b"])
    assert m["macro_auc"] is None and m["subset_accuracy"] == 1.0


def test_regression_metrics():
    y = np.array([[1.0], [2.0], [3.0], [4.0]])
    m = reporting.compute_metrics("regression", y, np.array([[1.0], [2.0], [3.0], [5.0]]), [])
    json.dumps(m)
    assert m["num_examples"] == 4
    assert m["mae"] == pytest.approx(0.25) and m["mse"] == pytest.approx(0.25) and m["rmse"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 1 / 5)  # SS_res = 1, SS_tot = 5
    assert m["pearson"] == pytest.approx(6.5 / math.sqrt(5 * 8.75))
    assert reporting.compute_metrics("regression", y, np.full((4, 1), 2.5), [])["pearson"] is None


def test_unknown_task_type_is_rejected():
    with pytest.raises(ValueError, match="unknown task type"):
        reporting.compute_metrics("ranking", ONE_HOT, PROBS, NAMES)


def test_worst_examples_orders_by_loss(tmp_path):
    describe = [{"text": f"example {i}"} for i in range(6)]
    rows = reporting.worst_examples("classification", ONE_HOT, PROBS, NAMES, describe, k=3)
    assert [r["index"] for r in rows] == [5, 1, 3]  # true-class probabilities 0.02, 0.3, 0.5
    assert rows[0] == {
        "text": "example 5",
        "index": 5,
        "true": "bird",
        "predicted": "cat",
        "confidence": 0.9,
        "loss": pytest.approx(-math.log(0.02), abs=1e-6),
    }

    truth = np.array([[1, 0], [0, 1]], dtype=float)
    rows = reporting.worst_examples(
        "multilabel",
        truth,
        np.array([[0.9, 0.1], [0.6, 0.55]]),
        ["a", "b"],
        [{"path": "x.png"}, {"path": "y.png"}],
        k=5,
    )
    assert [r["index"] for r in rows] == [1, 0]
    assert rows[0]["true"] == "b" and rows[0]["predicted"] == "a|b" and "confidence" not in rows[0]

    rows = reporting.worst_examples("regression", np.array([[1.0], [2.0]]), np.array([[1.5], [0.0]]), [], [{}, {}], k=1)
    assert rows == [{"index": 1, "true": 2.0, "predicted": 0.0, "loss": 2.0}]


def test_write_csv_uses_union_of_keys_in_first_seen_order(tmp_path):
    path = tmp_path / "rows.csv"
    reporting.write_csv([{"text": "café", "loss": 1.5}, {"loss": 0.5, "extra": "x"}], path)
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["text", "loss", "extra"], ["café", "1.5", ""], ["", "0.5", "x"]]


def test_plots_write_png(tmp_path):
    history = [
        {"loss": 1.0, "val_loss": 1.1, "accuracy": 0.5, "val_accuracy": 0.4, "learning_rate": 1e-3},
        {"loss": 0.6, "val_loss": 0.8, "accuracy": 0.7, "val_accuracy": 0.6, "learning_rate": 5e-4},
        {"loss": 0.4, "accuracy": 0.8, "learning_rate": 0.0},
    ]
    reporting.plot_history(history, tmp_path / "history.png")
    # A single epoch with only some keys (regression, no validation, LR logged as null) still draws.
    reporting.plot_history([{"loss": 0.3, "mae": 0.2, "learning_rate": None}], tmp_path / "single.png")
    reporting.plot_confusion_matrix(np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]]), NAMES, tmp_path / "cm.png")
    many = [f"class_number_{i}" for i in range(25)]
    matrix = np.diag(np.arange(25)) + 1
    matrix[3] = 0  # a class with no examples must not divide by zero
    reporting.plot_confusion_matrix(matrix, many, tmp_path / "cm25.png")
    reporting.plot_confusion_matrix(matrix[:2, :2], ["a", "b"], tmp_path / "raw.png", normalize=False)
    for name in ("history.png", "single.png", "cm.png", "cm25.png", "raw.png"):
        assert _is_png(tmp_path / name), name


def test_report_contains_metrics_tables_and_links():
    metrics = reporting.compute_metrics("classification", ONE_HOT, PROBS, NAMES)
    history = [{"loss": 1.0, "val_loss": 1.2, "accuracy": 0.5, "val_accuracy": 0.4, "learning_rate": 2e-5}]
    report = reporting.render_report(
        "demo",
        metrics,
        {"backbone": "bert_tiny", "epochs": 3},
        history,
        ["validation loss rose for 2 epochs"],
        ["plots/history.png"],
        bad_records=2,
    )
    assert report.startswith("# Run report: demo")
    assert all(name in report for name in NAMES)
    assert "| accuracy | 0.6667 |" in report and "| macro_f1 | 0.6556 |" in report
    assert "| dog | 0.6667 | 1.0000 | 0.8000 | 2 |" in report  # per-class row
    assert "| bird | 1 | 0 | 1 |" in report  # confusion-matrix row
    assert "| 1 | 1.0000 | 1.2000 | 0.5000 | 0.4000 | 2.00e-05 |" in report  # history row, LR stays readable
    assert "- validation loss rose for 2 epochs" in report and "Bad records skipped: 2" in report
    assert "(plots/history.png)" in report and "| backbone | bert_tiny |" in report


def test_report_for_regression_and_many_classes():
    m = reporting.compute_metrics("regression", np.array([[1.0], [2.0]]), np.array([[1.0], [2.5]]), [])
    report = reporting.render_report("reg", m, {}, [], [], [], bad_records=0)
    assert "| mae | 0.2500 |" in report and "- none" in report and "Per class" not in report

    names = [f"c{i}" for i in range(21)]
    m = reporting.compute_metrics("classification", np.eye(21), np.eye(21), names)
    report = reporting.render_report("wide", m, {}, [], [], [], bad_records=0)
    assert "| c20 |" in report and "Confusion matrix" not in report
