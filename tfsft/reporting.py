"""Metrics, error analysis, plots and the Markdown report. No TensorFlow: arrays in, files out.

What each task type reports (its metrics, per-example loss, worst-example columns) lives in
`tfsft.task_types`; this module applies it to splits. Metrics come from scikit-learn (the reference
implementations); plots from matplotlib's Agg backend,
imported only when a plot is drawn so that importing this module stays cheap and headless-safe.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tfsft.task_types import task_type as task_type_named


# ----------------------------------------------------------------------------------------- metrics
def compute_metrics(
    task_type: str, y_true: np.ndarray, scores: np.ndarray, class_names: list[str], threshold: float = 0.5
) -> dict:
    """JSON-serializable metrics. `scores` are probabilities (classification, multilabel) or values."""
    task = task_type_named(task_type)
    return task.report_metrics(
        np.asarray(y_true, dtype=np.float64), np.asarray(scores, dtype=np.float64), class_names, threshold
    )


# ----------------------------------------------------------------------------------------- error analysis
def example_losses(task_type: str, y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return task_type_named(task_type).example_losses(np.asarray(y_true, np.float64), np.asarray(scores, np.float64))


def worst_examples(task_type: str, y_true, scores, class_names: list[str], describe: list[dict], k: int) -> list[dict]:
    """The k examples with the highest loss, worst first: what the model gets most confidently wrong."""
    task = task_type_named(task_type)
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    losses = example_losses(task_type, y_true, scores)
    rows = []
    # Stable sort so that ties keep dataset order and the CSV is reproducible.
    for index in np.argsort(-losses, kind="stable")[:k]:
        index = int(index)
        row = {**describe[index], "index": index}
        row.update(task.example_columns(y_true[index], scores[index], class_names))
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

    matplotlib.use("Agg")  # never open a window or need a display, e.g. on a training server
    import matplotlib.pyplot as plt

    return plt


MAIN_METRICS = ("accuracy", "macro_f1", "mae", "auc", "rmse")


def _series(history: list[dict], key: str) -> np.ndarray:
    # A metric can be missing from some epochs (e.g. validation only every n epochs) or stored as null.
    return np.array([np.nan if e.get(key) is None else float(e[key]) for e in history], dtype=np.float64)


def plot_history(history: list[dict], path) -> None:
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    # Without markers a single epoch (or a gap-separated point) would draw nothing.
    marker = "o" if len(history) < 30 else None
    metric = next((m for m in MAIN_METRICS if any(m in e or f"val_{m}" in e for e in history)), None)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))

    for ax, key in ((axes[0], "loss"), (axes[1], metric)):
        for name, label in ((key or "", "train"), (f"val_{key}", "validation")):
            values = _series(history, name) if key is not None else np.array([np.nan])
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, marker=marker, label=label)
        ax.set_title(key or "metric")
        if ax.lines:
            ax.legend()
    lrs = _series(history, "learning_rate")
    known = lrs[~np.isnan(lrs)]
    if known.size:
        axes[2].plot(epochs, lrs, marker=marker, color="tab:green")
        if np.all(known > 0):
            axes[2].set_yscale("log")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="grey")
        if len(history):
            ax.set_xticks(epochs if len(history) <= 20 else np.linspace(1, len(history), 10, dtype=int))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(matrix, class_names: list[str], path, normalize: bool = True) -> None:
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    # Row-normalizing shows per-class recall, which stays readable when classes are imbalanced.
    shown = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0) if normalize else matrix
    n = len(class_names)
    size = max(4.0, min(0.6 * n + 2.5, 18.0))
    font = 10 if n <= 10 else max(5, 10 - (n - 10) // 4)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(float(shown.max()), 1.0))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    rotate = max(map(len, class_names), default=0) > 4
    ax.set_xticks(
        range(n), class_names, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=font
    )
    ax.set_yticks(range(n), class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    dark = 0.6 * (1.0 if normalize else float(shown.max() or 1.0))
    for i in range(n):
        for j in range(n):
            colour = "white" if shown[i, j] > dark else "black"
            if normalize:
                ax.text(j, i - 0.12, f"{shown[i, j]:.2f}", ha="center", va="center", fontsize=font - 1, color=colour)
                ax.text(
                    j,
                    i + 0.22,
                    f"({int(matrix[i, j])})",
                    ha="center",
                    va="center",
                    fontsize=max(font - 3, 4),
                    color=colour,
                )
            else:
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=font - 1, color=colour)
    ax.set_title("Confusion matrix (rows: true, normalized)" if normalize else "Confusion matrix (rows: true)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- report
def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        # Learning rates like 2e-05 would print as 0.0000 with fixed decimals.
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value).replace("|", "\\|")  # a literal pipe would split the Markdown cell


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(_fmt(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


HEADLINES = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "top_2_accuracy",
    "log_loss",
    "subset_accuracy",
    "micro_f1",
    "macro_auc",
    "hamming_loss",
    "mae",
    "rmse",
    "r2",
    "pearson",
)
HISTORY_KEYS = (
    "loss",
    "val_loss",
    "accuracy",
    "val_accuracy",
    "macro_f1",
    "val_macro_f1",
    "auc",
    "val_auc",
    "mae",
    "val_mae",
    "loss_anchor",
    "learning_rate",
)


def render_report(
    run_name: str,
    metrics: dict,
    config_summary: dict,
    history: list[dict],
    warnings: list[str],
    plots: list[str],
    bad_records: int,
) -> str:
    lines = [f"# Run report: {run_name}", ""]
    headline = [[key, metrics[key]] for key in HEADLINES if key in metrics]
    if headline:
        lines += [f"## Held-out metrics ({metrics.get('num_examples', '?')} examples)", ""]
        lines += _table(["metric", "value"], headline)
    if metrics.get("per_class"):
        lines += ["## Per class", ""]
        lines += _table(
            ["class", "precision", "recall", "F1", "support"],
            [[name, m["precision"], m["recall"], m["f1"], m["support"]] for name, m in metrics["per_class"].items()],
        )
    names = metrics.get("class_names", [])
    # Wider tables stop being readable in Markdown; the PNG covers those.
    if metrics.get("confusion_matrix") and len(names) <= 20:
        lines += ["## Confusion matrix (rows: true, columns: predicted)", ""]
        lines += _table(
            ["true \\ predicted", *names], [[name, *row] for name, row in zip(names, metrics["confusion_matrix"])]
        )
    if history:
        keys = [k for k in HISTORY_KEYS if any(k in e for e in history)]
        lines += ["## Training history", ""]
        lines += _table(["epoch", *keys], [[i + 1, *[e.get(k) for k in keys]] for i, e in enumerate(history)])
    lines += ["## Warnings", ""]
    lines += [f"- {w}" for w in warnings] or ["- none"]
    lines += ["", f"Bad records skipped: {bad_records}" + (" (see `bad_records.csv`)." if bad_records else "."), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["## Configuration", ""] + _table(["key", "value"], [[k, v] for k, v in config_summary.items()])
    return "\n".join(lines)
