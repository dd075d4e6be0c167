"""`python -m tfsft.tune --config base.yaml --config tune.yaml [--set key=value ...] [--max-trials N]`.

Searches the fields listed in the config's `tune.space` with Keras Tuner; every trial is a normal tfsft
training. Writes `runs/tune/<id>/`: results.csv / results.md (one row per trial, best first), best_config.yaml
(train it with `python -m tfsft.train --config .../best_config.yaml`), objective_vs_hparams.png, and HParams
logs for TensorBoard. Rerun the same command to continue an interrupted search.

Distributed: start the same command on each machine with KERASTUNER_TUNER_ID (chief / tuner0 / tuner1 ...),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT set (Keras Tuner's chief/worker mode); the chief hands out
trials and writes the outputs.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from tfsft.cli.common import add_config_arguments, positive_int, run_with_config
from tfsft.errors import ConfigError

if TYPE_CHECKING:
    from tfsft.config import RunConfig


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tfsft.tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(
        parser,
        "YAML config; repeat to merge several (e.g. the base run, then its tune: section).",
        "tune.tuner=bayesian",
        required=True,
    )
    parser.add_argument("--max-trials", type=positive_int, help="Shortcut for --set tune.max_trials=N.")
    parser.add_argument(
        "--tuner", choices=("random", "bayesian", "hyperband", "grid"), help="Shortcut for --set tune.tuner=..."
    )
    parser.add_argument("--name", help="Search name (default: the config's name); the folder adds a config hash.")
    parser.add_argument("--verbose", action="store_true", help="Keras progress output for every trial.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.max_trials is not None:
        overrides.append(f"tune.max_trials={args.max_trials}")
    if args.tuner:
        overrides.append(f"tune.tuner={args.tuner}")
    return run_with_config(args.config, overrides, args.verbose, lambda config: _search(config, args))


def _search(config: RunConfig, args: argparse.Namespace) -> None:
    if config.tune is None:
        raise ConfigError(
            f"The config {args.config} has no tune: section; add one (see "
            f"configs/tune_quickstart.yaml) with the fields to search under tune.space."
        )
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name) or args.name in (".", ".."):
        raise ConfigError(f"--name '{args.name}' must be a single folder name (letters, digits, _ . -).")
    from tfsft.preflight import check_run_inputs

    check_run_inputs(config)
    from tfsft.tuning import run_search

    result = run_search(config, args.name, verbose=1 if args.verbose else 0)
    print(f"Search directory: {result.root}")
    if result.rows:
        print((result.root / "results.md").read_text())
    if result.best_config_path:
        print(
            f"Best config: {result.best_config_path}\n"
            f"Retrain it: python -m tfsft.train --config {result.best_config_path}"
        )


if __name__ == "__main__":
    sys.exit(main())
