"""`history_steps.csv` (per-step scalars and in-epoch validations) and the step-resolution `history.png`.

No TensorFlow: rows in, files out. A row is either a training row (`loss`, learning rates, gradient norm,
examples/s averaged over the logging interval) or a validation row (`val_*` columns), both keyed by the
optimizer step, so one file holds both and a plot can put the validation points on the step axis.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from tfsft.reporting import MAIN_METRICS, _pyplot

FILE_NAME = "history_steps.csv"


class StepHistory:
    """Append-only CSV whose columns are fixed by the first row; a resume drops rows past the restored step."""

    def __init__(self, path: Path, write: bool = True):
        self.path = Path(path)
        self.write = write
        self.columns: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as handle:
                self.columns = next(csv.reader(handle), None)

    def truncate_after(self, step: int) -> None:
        """Forget rows logged after `step` (they will be logged again by the resumed run)."""
        if not (self.write and self.path.exists()):
            return
        kept = [row for row in read_rows(self.path) if row.get("step") is not None and row["step"] <= step]
        if not kept:
            self.path.unlink()
            self.columns = None
            return
        self.columns = list(kept[0].keys()) if self.columns is None else self.columns
        self._rewrite(kept)

    def _rewrite(self, rows: list[dict]) -> None:
        assert self.columns is not None
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
        tmp.replace(self.path)

    def append(self, row: dict, columns: list[str]) -> None:
        if not self.write:
            return
        if self.columns is None:
            self.columns = list(columns)
            with open(self.path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(self.columns)
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: _cell(v) for k, v in row.items()}
            )


def _cell(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def read_rows(path: Path) -> list[dict]:
    """The CSV as dicts of floats (`step` as int); empty cells are left out of their row."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row = {k: float(v) for k, v in raw.items() if v not in ("", None)}
            if "step" in row:
                row["step"] = int(row["step"])
            rows.append(row)
    return rows


def _column(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    if not points:
        return np.array([]), np.array([])
    steps, values = zip(*points)
    return np.asarray(steps), np.asarray(values)


def plot_step_history(rows: list[dict], epochs: list[dict], steps_per_epoch: int, path) -> None:
    """Loss, the main metric and the learning rate(s) against the step; validation as points on top.

    Epoch-end validation points come from the epoch history (at the epoch's last step); in-epoch validations
    (`logging.validate_every_steps`) from the step rows. Training metrics other than the loss are running means
    over the epoch, so the metric panel draws their epoch-end values only.
    """
    plt = _pyplot()
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    epoch_steps = np.arange(1, len(epochs) + 1) * steps_per_epoch
    metric = next((m for m in MAIN_METRICS if any(f"val_{m}" in e or m in e for e in epochs)), None)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))

    steps, loss = _column(train_rows, "loss")
    if loss.size:
        axes[0].plot(steps, loss, lw=1.0, color="tab:blue", label="train (interval mean)")
    _points(axes[0], epochs, epoch_steps, val_rows, "loss")
    axes[0].set_title("loss")
    if metric:
        train_metric = [(s, e[metric]) for s, e in zip(epoch_steps, epochs) if metric in e]
        if train_metric:
            axes[1].plot(*zip(*train_metric), "s--", color="tab:blue", label="train (epoch mean)")
        _points(axes[1], epochs, epoch_steps, val_rows, metric)
    axes[1].set_title(metric or "metric")

    lr_keys = [k for k in (train_rows[0] if train_rows else {}) if k.startswith("learning_rate")]
    for key in lr_keys:
        s, values = _column(train_rows, key)
        axes[2].plot(s, values, lw=1.2, label=key.replace("learning_rate/", "") if len(lr_keys) > 1 else None)
    if len(lr_keys) > 1:
        axes[2].legend()
    axes[2].set_title("learning rate (as applied)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        for boundary in epoch_steps[:-1]:
            ax.axvline(boundary, color="grey", lw=0.6, ls=":")
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="grey")
        elif ax is not axes[2] and ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _points(ax, epochs, epoch_steps, val_rows, key) -> None:
    """Validation values: epoch ends as big dots, in-epoch validations as small ones, joined by a thin line."""
    ends = {int(s): e[f"val_{key}"] for s, e in zip(epoch_steps, epochs) if f"val_{key}" in e}
    inside = {r["step"]: r[f"val_{key}"] for r in val_rows if f"val_{key}" in r and r["step"] not in ends}
    merged = sorted({**inside, **ends}.items())
    if not merged:
        return
    ax.plot(*zip(*merged), lw=0.8, color="tab:orange", alpha=0.6)
    if ends:
        ax.plot(*zip(*sorted(ends.items())), "o", color="tab:orange", ms=7, label="validation (epoch end)")
    if inside:
        ax.plot(*zip(*sorted(inside.items())), ".", color="tab:orange", ms=6, label="validation (in epoch)")
