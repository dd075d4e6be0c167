"""Temperature scaling (Guo et al., 2017): how sure the model says it is, made to match how often it is right.

After training, one temperature T is fitted on the validation split by minimising the negative log-likelihood
of softmax(logits / T); T > 1 softens an over-confident model. Dividing all logits by one positive number
never changes their argmax, so class ids, accuracy and F1 stay exactly as they were.

Multilabel: one temperature per label, each fitted on that label's binary NLL. sigmoid(z / T) >= 0.5 exactly
when z >= 0, so predictions at the default threshold 0.5 do not change (at other thresholds they may).

Reported: expected calibration error (ECE, 15 equal-width confidence bins; for multilabel over every
(example, label) probability against that label's frequency) and NLL, before and after, on validation and
test (metrics.json, report.md, plots/reliability.png). The temperature is written to `calibration.json` in the
run directory; the SavedModel export divides the logits by it before the softmax/sigmoid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from tfsft.task_types import task_type as task_type_named

BINS = 15
CALIBRATION_FILE = "calibration.json"
LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: wide enough for any model worth calibrating


def nll(task_type: str, logits: np.ndarray, targets: np.ndarray, temperature=1.0) -> float:
    """Mean negative log-likelihood of the targets under logits / temperature."""
    z = np.asarray(logits, np.float64) / np.asarray(temperature, np.float64)
    return task_type_named(task_type).nll(z, np.asarray(targets, np.float64))


def _fit_one(task_type: str, logits: np.ndarray, targets: np.ndarray) -> float:
    result = minimize_scalar(
        lambda log_t: nll(task_type, logits, targets, np.exp(log_t)),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    best = float(np.exp(result.x))
    # The bounded search can stop a hair off; never return a temperature worse than leaving the model alone.
    return best if nll(task_type, logits, targets, best) <= nll(task_type, logits, targets, 1.0) else 1.0


def fit_temperature(task_type: str, logits: np.ndarray, targets: np.ndarray):
    """The NLL-minimising temperature: a float (classification) or one per label (multilabel, a list)."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    if task_type_named(task_type).per_label_temperature:
        return [_fit_one(task_type, logits[:, j : j + 1], targets[:, j : j + 1]) for j in range(logits.shape[1])]
    return _fit_one(task_type, logits, targets)


def expected_calibration_error(
    task_type: str, probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS
) -> float:
    confidence, correct = _confidence_and_outcome(task_type, probabilities, targets)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def _confidence_and_outcome(task_type, probabilities, targets):
    probabilities, targets = np.asarray(probabilities, np.float64), np.asarray(targets, np.float64)
    return task_type_named(task_type).confidence_and_outcome(probabilities, targets)


def summarize(task_type: str, logits: np.ndarray, targets: np.ndarray, temperature) -> dict:
    activation = task_type_named(task_type).activation
    before = activation(logits)
    after = activation(np.asarray(logits, np.float64) / np.asarray(temperature, np.float64))
    return {
        "ece_before": expected_calibration_error(task_type, before, targets),
        "ece_after": expected_calibration_error(task_type, after, targets),
        "nll_before": nll(task_type, logits, targets),
        "nll_after": nll(task_type, logits, targets, temperature),
        "examples": len(targets),
    }


def load_temperature(run_dir: str | Path) -> np.ndarray | None:
    """The run's fitted temperature as float32 (a scalar, or one per label), or None when not calibrated."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["temperature"], np.float32)


def plot_reliability(task_type: str, curves: dict, path: Path, bins: int = BINS) -> None:
    """Reliability diagram: per confidence bin, how often the model is right; `curves` maps label -> (probs, y)."""
    from tfsft.reporting import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    edges = np.linspace(0.0, 1.0, bins + 1)
    for label, (probabilities, targets) in curves.items():
        confidence, correct = _confidence_and_outcome(task_type, probabilities, targets)
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
        xs = [confidence[which == b].mean() for b in range(bins) if (which == b).any()]
        ys = [correct[which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(task_type_named(task_type).reliability_axes[0])
    ax.set_ylabel(task_type_named(task_type).reliability_axes[1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability ({bins} bins)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def calibrate_run(task_type: str, logits: dict, targets: dict, run_dir: Path) -> dict:
    """Fit on `logits['validation']`, report on every split given; writes calibration.json and the plot."""
    temperature = fit_temperature(task_type, logits["validation"], targets["validation"])
    result: dict = {"method": "temperature", "temperature": temperature, "bins": BINS}
    activation = task_type_named(task_type).activation
    curves = {}
    for split, split_logits in logits.items():
        result[split] = summarize(task_type, split_logits, targets[split], temperature)
        scaled = np.asarray(split_logits, np.float64) / np.asarray(temperature, np.float64)
        curves[f"{split} before"] = (activation(split_logits), targets[split])
        curves[f"{split} after (T)"] = (activation(scaled), targets[split])
    (run_dir / CALIBRATION_FILE).write_text(json.dumps({"method": "temperature", "temperature": temperature}, indent=1))
    (run_dir / "plots").mkdir(exist_ok=True)
    plot_reliability(task_type, curves, run_dir / "plots" / "reliability.png")
    return result


def report_section(result: dict) -> str:
    temperature = result["temperature"]
    shown = f"{temperature:.4f}" if isinstance(temperature, float) else ", ".join(f"{t:.3f}" for t in temperature)
    lines = [
        "## Calibration (temperature scaling, fitted on validation)",
        "",
        f"Temperature: {shown}. Class ids are unchanged; the exported probabilities use it.",
        "",
        "| split | ECE before | ECE after | NLL before | NLL after |",
        "|---|---|---|---|---|",
    ]
    for split in ("validation", "test"):
        if split in result:
            m = result[split]
            lines.append(
                f"| {split} | {m['ece_before']:.4f} | {m['ece_after']:.4f} | {m['nll_before']:.4f} | "
                f"{m['nll_after']:.4f} |"
            )
    return "\n".join(lines + ["", "![reliability](plots/reliability.png)", ""])
