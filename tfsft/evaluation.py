"""Evaluate a model on a split and write metrics.json, report.md, plots and worst_examples.csv."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfsft import reporting, step_history
from tfsft.config import RunConfig
from tfsft.data import Records
from tfsft.modalities.base import Modality
from tfsft.task_types import task_type

if TYPE_CHECKING:
    import keras

    from tfsft.trainer import Prepared

log = logging.getLogger(__name__)


def headline(config: RunConfig, metrics: dict) -> str:
    """The task type's two headline metrics, as printed after training and by tfsft.evaluate."""
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in task_type(config).headline if metrics.get(k) is not None)


def predict_logits(model: keras.Model, modality: Modality, records: Records, targets: np.ndarray, batch_size: int) -> np.ndarray:
    dataset = modality.dataset(records, targets, training=False, batch_size=batch_size)
    return model.predict(dataset.map(lambda x, y: x), verbose=0)


def predict_scores(model: keras.Model, modality: Modality, records: Records, targets: np.ndarray, config: RunConfig,
                   batch_size: int) -> np.ndarray:
    return task_type(config).activation(predict_logits(model, modality, records, targets, batch_size))


def _calibrate(p: Prepared, results: dict) -> None:
    """evaluation.calibrate: fit the temperature on validation; ECE/NLL before and after into `results`."""
    from tfsft import calibration

    batch = max(p.config.training.batch_size, 64)
    splits = [s for s in ("validation", "test") if getattr(p.splits, s) is not None]
    logits = {s: predict_logits(p.model, p.modality, getattr(p.splits, s), p.targets[s], batch) for s in splits}
    results["calibration"] = calibration.calibrate_run(p.config.task.type, logits,
                                                       {s: p.targets[s] for s in splits}, p.run.path)
    fitted = results["calibration"]
    print(f"Calibration: temperature {fitted['temperature']}; validation ECE {fitted['validation']['ece_before']:.4f}"
          f" -> {fitted['validation']['ece_after']:.4f}, NLL {fitted['validation']['nll_before']:.4f} -> "
          f"{fitted['validation']['nll_after']:.4f}", flush=True)


def evaluate_records(model: keras.Model, modality: Modality, records: Records, targets: np.ndarray, config: RunConfig,
                     class_names: list[str], out_dir: Path, prefix: str = "test") -> dict:
    """Metrics for one split; writes `<prefix>_metrics.json`-style files into `out_dir`."""
    batch = max(config.training.batch_size, 64)
    scores = predict_scores(model, modality, records, targets, config, batch)
    metrics = reporting.compute_metrics(config.task.type, targets, scores, class_names,
                                        threshold=config.evaluation.multilabel_threshold)
    if config.evaluation.worst_examples:
        rows = reporting.worst_examples(config.task.type, targets, scores, class_names,
                                        [modality.describe(records, i) for i in range(len(records))],
                                        config.evaluation.worst_examples)
        for row in rows:
            row["source_row"] = records.rows[row["index"]]
        reporting.write_csv(rows, out_dir / f"{prefix}_worst_examples.csv")
    if "confusion_matrix" in metrics:
        out_dir.joinpath("plots").mkdir(exist_ok=True)
        reporting.plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), class_names,
                                        out_dir / "plots" / f"{prefix}_confusion_matrix.png")
    return metrics


def evaluate_run(p: Prepared, history: list[dict], warnings: list[str], train_seconds: float) -> dict:
    """Called at the end of training: test (or validation) metrics, report and plots in the run directory."""
    config, run = p.config, p.run
    run.plots.mkdir(exist_ok=True)
    steps_file = run / step_history.FILE_NAME
    if history and steps_file.exists():  # step curves with the validation points on top
        step_history.plot_step_history(step_history.read_rows(steps_file), history, p.steps_per_epoch,
                                       run.plots / "history.png")
    elif history:
        reporting.plot_history(history, run.plots / "history.png")
    results: dict = {"train_seconds": round(train_seconds, 1), "epochs_run": len(history)}
    for split in ("test", "validation"):
        records = getattr(p.splits, split)
        if records is None:
            continue
        results[split] = evaluate_records(p.model, p.modality, records, p.targets[split], config,
                                          p.splits.classes.names, run.path, prefix=split)
    if config.evaluation.calibrate == "temperature":
        _calibrate(p, results)
    (run / "metrics.json").write_text(json.dumps(results, indent=1))
    main = results.get("test") or results.get("validation") or {}
    plots = [str(path.relative_to(run.path)) for path in sorted(run.plots.glob("*.png"))]
    summary = {"backbone": config.model.backbone.preset or config.model.backbone.name
               or config.model.backbone.architecture, "task": f"{config.task.modality}/{config.task.type}",
               "freeze": config.freeze.strategy, "optimizer": config.optimizer.name,
               "learning_rate": config.optimizer.learning_rate, "schedule": config.schedule.name,
               "epochs": config.training.epochs, "batch_size": config.training.batch_size,
               "train_examples": len(p.splits.train), "train_seconds": round(train_seconds, 1)}
    anchor = config.regularization.pretrained_anchor
    if anchor.kind != "none":
        summary["pretrained_anchor"] = f"{anchor.kind} alpha={anchor.alpha} beta={anchor.beta}"
    if config.freeze.layerwise_lr_decay != 1.0:
        summary["layerwise_lr_decay"] = config.freeze.layerwise_lr_decay
    report = reporting.render_report(config.name, main, summary, history, warnings, plots, len(p.splits.bad.items))
    if "calibration" in results:
        from tfsft.calibration import report_section

        report += "\n" + report_section(results["calibration"])
    (run / "report.md").write_text(report, encoding="utf-8")
    which = "test" if "test" in results else "validation"
    print(f"Evaluation on {which}: {headline(config, main)}. Report: {run / 'report.md'}", flush=True)
    return results
