"""`python -m tfsft.evaluate --run runs/<name>/<id> [--data other_test.csv]`.

Re-evaluates a finished run's model on its test split or on another file/folder of the same format.
Results go to `<run>/evaluations/<data>-<time>/` (metrics.json, worst examples, confusion matrix); the
run's own files are never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tfsft.cli.common import run_main, setup_logging
from tfsft.cli.startup import prepare_tensorflow_import
from tfsft.errors import ConfigError, DataError


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
    parser = argparse.ArgumentParser(
        prog="python -m tfsft.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, type=Path, help="A finished run directory (runs/<name>/<id>).")
    parser.add_argument("--data", help="Evaluate on this file/folder instead of the run's test split.")
    parser.add_argument(
        "--verbose", action="store_true", help="Debug logging, and TensorFlow's own start-up lines (hidden by default)."
    )
    args = parser.parse_args(argv)
    prepare_tensorflow_import(args.verbose)
    setup_logging(args.verbose)

    def run():
        check_arguments(args.run, args.data)  # before TensorFlow loads with tfsft.evaluation
        from tfsft.evaluation import evaluate_finished_run

        evaluate_finished_run(args.run, args.data)

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
