"""`python -m tfsft.evaluate --run runs/<name>/<id> [--data other_test.csv]`.

Re-evaluates a finished run's model on its test split or on another file/folder of the same format.
Results go to `<run>/evaluations/<data>-<time>/` (metrics.json, worst examples, confusion matrix); the
run's own files are never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tfsft.cli import quiet_tensorflow, run_main, setup_logging
from tfsft.errors import ConfigError, DataError
from tfsft.runs import load_run


def evaluate(run_dir: Path, data: str | None) -> dict:
    from tfsft.data import BadRecords, ClassIndex
    from tfsft.data import _check_bad_fraction as check_bad_fraction
    from tfsft.evaluation import evaluate_records, headline
    from tfsft.modalities import get_modality, modality_spec
    from tfsft.paths import resolve

    check_arguments(run_dir, data)
    config, class_names, model = load_run(run_dir)
    source = data or config.data.test
    if not source:
        raise DataError(f"The run {run_dir} has no test file in its config (it was split off); pass --data FILE.")
    path = resolve(source, what="--data")
    if not Path(path).exists():
        raise DataError(f"--data '{source}' does not exist. Give a file (or image folder) in the training format.")
    spec = modality_spec(config)
    if Path(path).is_dir() and not spec.accepts_folders:
        raise DataError(f"--data '{source}' is a folder; this {config.task.modality} run needs "
                        f"{spec.source_description}.")
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


def check_arguments(run_dir: Path, data: str | None) -> None:
    """--run and --data, before any model is loaded."""
    from tfsft.preflight import writable_folder_problem

    if not run_dir.exists():
        raise ConfigError(f"--run '{run_dir}' does not exist. Pass a finished run directory (runs/<name>/<id>).")
    if not run_dir.is_dir():
        raise ConfigError(f"--run '{run_dir}' is a file; pass a finished run directory (runs/<name>/<id>).")
    if data is not None:
        from tfsft.paths import resolve

        if not data.strip():
            raise DataError("--data is empty. Give a file (or image folder) in the training format.")
        if not Path(resolve(data, what="--data")).exists():
            raise DataError(f"--data '{data}' does not exist. Give a file (or image folder) in the training format.")
    problem = writable_folder_problem(str(run_dir / "evaluations"), "the run's evaluations folder")
    if problem:
        raise ConfigError(problem)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsft.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="A finished run directory (runs/<name>/<id>).")
    parser.add_argument("--data", help="Evaluate on this file/folder instead of the run's test split.")
    parser.add_argument("--verbose", action="store_true",
                        help="Debug logging, and TensorFlow's own start-up lines (hidden by default).")
    args = parser.parse_args(argv)
    quiet_tensorflow(args.verbose)
    setup_logging(args.verbose)
    return run_main(lambda: evaluate(args.run, args.data))


if __name__ == "__main__":
    sys.exit(main())
