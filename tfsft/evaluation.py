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
    import tensorflow as tf

    from tfsft.trainer import Prepared

log = logging.getLogger(__name__)


def headline(config: RunConfig, metrics: dict) -> str:
    """The task type's two headline metrics, as printed after training and by tfsft.evaluate."""
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in task_type(config).headline if metrics.get(k) is not None)


# Private switch: False evaluates in file order (the behaviour before length-sorted evaluation); tests compare both.
_SORTED = True


def evaluation_dataset(
    modality: Modality, records: Records, targets: np.ndarray, batch_size: int, steps: int | None = None
) -> tuple[tf.data.Dataset, np.ndarray]:
    """`(inputs, targets)` batches of a split for a forward pass outside training, in the modality's evaluation
    order (text: by length, so each batch is padded less), and that order: position k holds record `order[k]`.

    Aggregated metrics (loss and metric means, F1/AUC confusion counts) do not depend on the order; anything kept
    per example must be put back with `in_record_order`. `steps` caps the batches a pass reads (Keras's
    validation_steps): each run of that many batches holds the same records as in file order.
    """
    block = steps * batch_size if steps else None
    order = modality.evaluation_order(records, block) if _SORTED else np.arange(len(records))
    return modality.ordered_dataset(records, targets, order, batch_size), order


def validation_batches(
    modality: Modality, records: Records, targets: np.ndarray, batch_size: int, steps: int | None = None
) -> tf.data.Dataset:
    """The batches of `evaluation_dataset` without their order, for passes that keep aggregated metrics only
    (validation during fit): the modality may sort them inside the pipeline."""
    if not _SORTED:
        return modality.dataset(records, targets, training=False, batch_size=batch_size)
    return modality.evaluation_batches(records, targets, batch_size, steps * batch_size if steps else None)


def in_record_order(outputs: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Outputs computed in `order` (see `evaluation_dataset`), back in the records' own order."""
    return outputs[np.argsort(order)]


def predict_logits(
    model: keras.Model, modality: Modality, records: Records, targets: np.ndarray, batch_size: int
) -> np.ndarray:
    """The model's outputs for every record, in the records' order (computed in the modality's evaluation order)."""
    dataset, order = evaluation_dataset(modality, records, targets, batch_size)
    return in_record_order(model.predict(dataset.map(lambda x, y: x), verbose=0), order)


def eval_batch_size(config: RunConfig) -> int:
    """Batch size of forward passes outside training: no gradients or optimizer state, so at least 64."""
    return max(config.training.batch_size, 64)


def _calibrate(p: Prepared, results: dict, logits: dict[str, np.ndarray]) -> None:
    """evaluation.calibrate: fit the temperature on validation; ECE/NLL before and after into `results`.
    `logits`: each held-out split's outputs, already computed for its metrics (one forward pass per split)."""
    from tfsft import calibration

    splits = [s for s in ("validation", "test") if s in logits]
    results["calibration"] = calibration.calibrate_run(
        p.config.task.type, logits, {s: p.targets[s] for s in splits}, p.run.path
    )
    fitted = results["calibration"]
    print(
        f"Calibration: temperature {fitted['temperature']}; validation ECE {fitted['validation']['ece_before']:.4f}"
        f" -> {fitted['validation']['ece_after']:.4f}, NLL {fitted['validation']['nll_before']:.4f} -> "
        f"{fitted['validation']['nll_after']:.4f}",
        flush=True,
    )


def evaluate_records(
    model: keras.Model,
    modality: Modality,
    records: Records,
    targets: np.ndarray,
    config: RunConfig,
    class_names: list[str],
    out_dir: Path,
    prefix: str = "test",
    logits: np.ndarray | None = None,
) -> dict:
    """Metrics for one split; writes `<prefix>_metrics.json`-style files into `out_dir`. `logits`: the model's
    outputs on `records` when the caller already has them (else computed here)."""
    if logits is None:
        logits = predict_logits(model, modality, records, targets, eval_batch_size(config))
    scores = task_type(config).activation(logits)
    metrics = reporting.compute_metrics(
        config.task.type, targets, scores, class_names, threshold=config.evaluation.multilabel_threshold
    )
    if config.evaluation.worst_examples:
        rows = reporting.worst_examples(
            config.task.type,
            targets,
            scores,
            class_names,
            [modality.describe(records, i) for i in range(len(records))],
            config.evaluation.worst_examples,
        )
        for row in rows:
            row["source_row"] = records.rows[row["index"]]
        reporting.write_csv(rows, out_dir / f"{prefix}_worst_examples.csv")
    if "confusion_matrix" in metrics:
        out_dir.joinpath("plots").mkdir(exist_ok=True)
        reporting.plot_confusion_matrix(
            np.asarray(metrics["confusion_matrix"]), class_names, out_dir / "plots" / f"{prefix}_confusion_matrix.png"
        )
    return metrics


def evaluate_run(p: Prepared, history: list[dict], warnings: list[str], train_seconds: float) -> dict:
    """Called at the end of training: test (or validation) metrics, report and plots in the run directory."""
    config, run = p.config, p.run
    run.plots.mkdir(exist_ok=True)
    steps_file = run / step_history.FILE_NAME
    if history and steps_file.exists():  # step curves with the validation points on top
        step_history.plot_step_history(
            step_history.read_rows(steps_file), history, p.steps_per_epoch, run.plots / "history.png"
        )
    elif history:
        reporting.plot_history(history, run.plots / "history.png")
    results: dict = {"train_seconds": round(train_seconds, 1), "epochs_run": len(history)}
    logits: dict[str, np.ndarray] = {}
    for split in ("test", "validation"):
        records = getattr(p.splits, split)
        if records is None:
            continue
        logits[split] = predict_logits(p.model, p.modality, records, p.targets[split], eval_batch_size(config))
        results[split] = evaluate_records(
            p.model,
            p.modality,
            records,
            p.targets[split],
            config,
            p.splits.classes.names,
            run.path,
            prefix=split,
            logits=logits[split],
        )
    if config.evaluation.calibrate == "temperature":
        _calibrate(p, results, logits)
    (run / "metrics.json").write_text(json.dumps(results, indent=1))
    main = results.get("test") or results.get("validation") or {}
    plots = [str(path.relative_to(run.path)) for path in sorted(run.plots.glob("*.png"))]
    summary = {
        "backbone": config.model.backbone.preset or config.model.backbone.name or config.model.backbone.architecture,
        "task": f"{config.task.modality}/{config.task.type}",
        "freeze": config.freeze.strategy,
        "optimizer": config.optimizer.name,
        "learning_rate": config.optimizer.learning_rate,
        "schedule": config.schedule.name,
        "epochs": config.training.epochs,
        "batch_size": config.training.batch_size,
        "train_examples": len(p.splits.train),
        "train_seconds": round(train_seconds, 1),
    }
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


def evaluate_finished_run(run_dir: Path, data: str | None) -> dict:
    """`python -m tfsft.evaluate`: a finished run's model on its test split or on `data` (a file or folder in the
    training format), written to `<run>/evaluations/<data>-<time>/`; the run's own files are never overwritten.
    The command line checks --run and --data first (tfsft.cli.evaluate.check_arguments)."""
    import time

    from tfsft.data import BadRecords, ClassIndex
    from tfsft.data import _check_bad_fraction as check_bad_fraction
    from tfsft.errors import DataError
    from tfsft.modalities import get_modality, modality_spec
    from tfsft.paths import resolve
    from tfsft.runs import load_run, use_float32_compute

    config, class_names, model = load_run(run_dir)
    use_float32_compute(model)  # as it is exported
    source = data or config.data.test
    if not source:
        raise DataError(f"The run {run_dir} has no test file in its config (it was split off); pass --data FILE.")
    path = resolve(source, what="--data")
    if not Path(path).exists():
        raise DataError(f"--data '{source}' does not exist. Give a file (or image folder) in the training format.")
    spec = modality_spec(config)
    if Path(path).is_dir() and not spec.accepts_folders:
        raise DataError(
            f"--data '{source}' is a folder; this {config.task.modality} run needs {spec.source_description}."
        )
    modality = get_modality(config)
    bad = BadRecords(policy=config.data.on_bad_record)
    records = modality.read(path, bad)
    classes = ClassIndex(class_names)
    records = classes.filter_unknown(records, bad)
    check_bad_fraction(bad, path, len(records), config.data.max_bad_fraction)
    if len(records) == 0:
        raise DataError(f"No usable records in '{source}' ({len(bad.items)} bad). Check its columns and labels.")
    modality.prepare(records, run_dir)
    out = run_dir / "evaluations" / f"{Path(path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    bad.write(out / "bad_records.csv")
    targets = classes.targets(records.labels, config.task.type)
    metrics = evaluate_records(model, modality, records, targets, config, class_names, out, prefix="eval")
    metrics["data"] = str(path)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"{len(records)} examples ({len(bad.items)} bad skipped): {headline(config, metrics)}\nResults: {out}")
    return metrics
