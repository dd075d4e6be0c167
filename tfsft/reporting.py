"""Metrics, error analysis, plots and the Markdown report. No TensorFlow: arrays in, files out.

Metrics come from scikit-learn (the reference implementations); plots from matplotlib's Agg backend.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import numpy as np

EPS = 1e-7


def _f(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------- metrics
def compute_metrics(task_type: str, y_true: np.ndarray, scores: np.ndarray, class_names: list[str],
                    threshold: float = 0.5) -> dict:
    y_true, scores = np.asarray(y_true, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if task_type == "classification":
        return _classification(y_true, scores, class_names)
    if task_type == "multilabel":
        return _multilabel(y_true, scores, class_names, threshold)
    return _regression(y_true.reshape(-1), scores.reshape(-1))


def _per_class(names, precision, recall, f1, support) -> dict:
    return {name: {"precision": _f(p), "recall": _f(r), "f1": _f(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)}


def _classification(y_true, probs, names) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(names)))
    true, pred = y_true.argmax(axis=-1), probs.argmax(axis=-1)
    per_class = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    out = {"num_examples": int(len(true)), "class_names": list(names), "accuracy": _f(np.mean(true == pred))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(true, pred, labels=labels, average=average, zero_division=0)
        out.update({f"{average}_precision": _f(p), f"{average}_recall": _f(r), f"{average}_f1": _f(f)})
    out["per_class"] = _per_class(names, *per_class)
    out["confusion_matrix"] = confusion_matrix(true, pred, labels=labels).tolist()
    # Soft labels (label smoothing is not applied here, but MixUp-style targets could be) use the full distribution.
    out["log_loss"] = _f(-np.mean(np.sum(y_true * np.log(np.clip(probs, EPS, 1.0)), axis=-1)))
    if len(names) > 2:
        top2 = np.argsort(-probs, axis=-1)[:, :2]
        out["top_2_accuracy"] = _f(np.mean([t in row for t, row in zip(true, top2)]))
    return out


def _multilabel(y_true, scores, names, threshold) -> dict:
    from sklearn.metrics import hamming_loss, precision_recall_fscore_support, roc_auc_score

    truth, pred = y_true >= 0.5, scores >= threshold
    out = {"num_examples": int(len(truth)), "class_names": list(names), "threshold": float(threshold),
           "subset_accuracy": _f(np.mean(np.all(truth == pred, axis=1))),
           "hamming_loss": _f(hamming_loss(truth, pred))}
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(truth, pred, average=average, zero_division=0)
        out.update({f"{average}_precision": _f(p), f"{average}_recall": _f(r), f"{average}_f1": _f(f)})
    out["per_class"] = _per_class(names, *precision_recall_fscore_support(truth, pred, zero_division=0))
    scorable = [i for i in range(truth.shape[1]) if 0 < truth[:, i].sum() < len(truth)]
    out["macro_auc"] = _f(np.mean([roc_auc_score(truth[:, i], scores[:, i]) for i in scorable])) if scorable else None
    return out


def _regression(y_true, y_pred) -> dict:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    mse = mean_squared_error(y_true, y_pred)
    constant = np.std(y_true) == 0 or np.std(y_pred) == 0
    return {"num_examples": int(len(y_true)), "mae": _f(mean_absolute_error(y_true, y_pred)), "mse": _f(mse),
            "rmse": _f(math.sqrt(mse)), "r2": _f(r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
            "pearson": None if constant else _f(np.corrcoef(y_true, y_pred)[0, 1])}


# ----------------------------------------------------------------------------------------- error analysis
def example_losses(task_type: str, y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    y_true, scores = np.asarray(y_true, np.float64), np.asarray(scores, np.float64)
    if task_type == "classification":
        return -np.sum(y_true * np.log(np.clip(scores, EPS, 1.0)), axis=-1)
    if task_type == "multilabel":
        p = np.clip(scores, EPS, 1 - EPS)
        return -np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p), axis=-1)
    return np.abs(y_true.reshape(-1) - scores.reshape(-1))


def _names(row: np.ndarray, names: list[str], threshold: float = 0.5) -> str:
    return "|".join(name for name, value in zip(names, row) if value >= threshold)


def worst_examples(task_type: str, y_true, scores, class_names: list[str], describe: list[dict], k: int) -> list[dict]:
    """The k examples with the highest loss, worst first: what the model gets most confidently wrong."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    losses = example_losses(task_type, y_true, scores)
    rows = []
    for index in np.argsort(-losses, kind="stable")[:k]:
        index = int(index)
        row = {**describe[index], "index": index}
        if task_type == "classification":
            predicted = int(scores[index].argmax())
            row.update(true=class_names[int(y_true[index].argmax())], predicted=class_names[predicted],
                       confidence=round(float(scores[index][predicted]), 6))
        elif task_type == "multilabel":
            row.update(true=_names(y_true[index], class_names), predicted=_names(scores[index], class_names))
        else:
            row.update(true=float(y_true[index].reshape(-1)[0]), predicted=float(scores[index].reshape(-1)[0]))
        row["loss"] = round(float(losses[index]), 6)
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path) -> None:
    header: list[str] = []
    for row in rows:
        header.extend(key for key in row if key not in header)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MAIN_METRICS = ("accuracy", "macro_f1", "mae", "auc", "rmse")


def plot_history(history: list[dict], path) -> None:
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    marker = "o" if len(history) < 30 else None
    metric = next((m for m in MAIN_METRICS if any(m in e for e in history)), None)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))

    def series(ax, key, label):
        values = [e.get(key, np.nan) for e in history]
        if not np.all(np.isnan(values)):
            ax.plot(epochs, values, marker=marker, label=label)

    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], metric, metric or "metric")):
        if key:
            series(ax, key, "train")
            series(ax, f"val_{key}", "validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    lrs = [e.get("learning_rate", np.nan) for e in history]
    axes[2].plot(epochs, lrs, marker=marker, color="tab:green")
    if all(v > 0 for v in lrs if not np.isnan(v)) and not np.all(np.isnan(lrs)):
        axes[2].set_yscale("log")
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(matrix, class_names: list[str], path, normalize: bool = True) -> None:
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    shown = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0) if normalize else matrix
    n = len(class_names)
    size = max(4.0, min(0.6 * n + 2.5, 18.0))
    font = 10 if n <= 10 else max(5, 10 - (n - 10) // 4)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=45 if max(map(len, class_names)) > 4 else 0, ha="right",
                  fontsize=font)
    ax.set_yticks(range(n), class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            colour = "white" if shown[i, j] > 0.6 else "black"
            ax.text(j, i, f"{shown[i, j]:.2f}\n({int(matrix[i, j])})", ha="center", va="center",
                    fontsize=font - 1, color=colour)
    ax.set_title("Confusion matrix (rows: true, normalized)" if normalize else "Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- report
def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


HEADLINES = ("accuracy", "macro_f1", "weighted_f1", "top_2_accuracy", "log_loss", "subset_accuracy", "micro_f1",
             "macro_auc", "hamming_loss", "mae", "rmse", "r2", "pearson")


def render_report(run_name: str, metrics: dict, config_summary: dict, history: list[dict], warnings: list[str],
                  plots: list[str], bad_records: int) -> str:
    lines = [f"# Run report: {run_name}", ""]
    headline = [[key, metrics[key]] for key in HEADLINES if key in metrics]
    if headline:
        lines += [f"## Held-out metrics ({metrics.get('num_examples', '?')} examples)", ""]
        lines += _table(["metric", "value"], headline)
    if metrics.get("per_class"):
        lines += ["## Per class", ""]
        lines += _table(["class", "precision", "recall", "F1", "support"],
                        [[name, m["precision"], m["recall"], m["f1"], m["support"]]
                         for name, m in metrics["per_class"].items()])
    names = metrics.get("class_names", [])
    if metrics.get("confusion_matrix") and len(names) <= 20:
        lines += ["## Confusion matrix (rows: true, columns: predicted)", ""]
        lines += _table(["true \\ predicted", *names],
                        [[name, *row] for name, row in zip(names, metrics["confusion_matrix"])])
    if history:
        keys = [k for k in ("loss", "val_loss", "accuracy", "val_accuracy", "macro_f1", "val_macro_f1", "mae",
                            "val_mae", "learning_rate") if any(k in e for e in history)]
        lines += ["## Training history", ""]
        lines += _table(["epoch", *keys], [[i + 1, *[e.get(k) for k in keys]] for i, e in enumerate(history)])
    lines += ["## Warnings", ""]
    lines += [f"- {w}" for w in warnings] or ["- none"]
    lines += ["", f"Bad records skipped: {bad_records} (see `bad_records.csv`).", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["## Configuration", ""] + _table(["key", "value"], [[k, v] for k, v in config_summary.items()])
    return "\n".join(lines)
