"""Shared plumbing of the entry points in `tfsft.cli`: logging, config loading, user errors, and argparse
types that refuse bad values before any work.

A refused argument is one paragraph on stderr naming the option, the value received and what is
allowed, with exit code 2 (argparse's code for usage errors), never a traceback or a usage dump.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from tfsft.cli.startup import prepare_tensorflow_import
from tfsft.errors import TfsftError
from tfsft.versions import model_name_problem, version_problem

if TYPE_CHECKING:
    from tfsft.config import RunConfig

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUICKSTART = REPO_CONFIGS / "quickstart.yaml"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("absl", "h5py", "matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_config_arguments(parser, config_help: str, set_example: str, required: bool = False) -> None:
    """`--config FILE` (repeatable, merged in order) and `--set KEY=VALUE` (repeatable), as every config-driven
    command takes them."""
    parser.add_argument("--config", action="append", default=[], required=required, help=config_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"Override one config value, e.g. --set {set_example}",
    )


def run_with_config(config_files: list, overrides: list, verbose: bool, command: Callable[[RunConfig], None]) -> int:
    """The start every config-driven entry point shares: quiet TF start-up, logging, then load the merged config
    (its errors come before any TF work) and run `command(config)`; user errors end as one paragraph."""
    prepare_tensorflow_import(verbose)
    setup_logging(verbose)

    def run():
        from tfsft.config import load_config

        command(load_config(config_files, overrides))

    return run_main(run)


def format_error(message: str) -> str:
    """The error paragraph as raised: no wrapping, so paths, URLs and dotted keys stay whole and copyable."""
    return " ".join(str(message).split())


def run_main(fn) -> int:
    """Run `fn()`, turning a TfsftError into one paragraph on stderr and its exit code."""
    try:
        fn()
        return 0
    except TfsftError as exc:
        print(f"\nerror: {format_error(str(exc))}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint is kept; rerun the same command to resume.", file=sys.stderr)
        return 130


# === argparse types: a refused value exits 2 with one paragraph naming the option ===


class ParagraphParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one paragraph (argparse prints a usage block first)."""

    def error(self, message: str) -> NoReturn:
        print(f"\nerror: {self.prog}: {message}. Run {self.prog} --help for the options.", file=sys.stderr, flush=True)
        sys.exit(2)


def _named(parse: Callable, name: str) -> Callable:
    parse.__name__ = name  # argparse names the type in its "invalid <name> value" message
    return parse


def _number(text: str, kind: type):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'a whole number' if kind is int else 'a number'}, got '{text}'"
        ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def bounded(kind: type, low=None, high=None, low_open: bool = False) -> Callable:
    """A type accepting `kind` values in [low, high] (or (low, high] with low_open)."""

    def parse(text: str):
        value = _number(text, kind)
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            lower = f"greater than {low}" if low_open else f"at least {low}"
            allowed = f"{lower} and at most {high}" if high is not None else lower
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    return _named(parse, kind.__name__)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1, refused by argparse (exit 2, naming the option) otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


def positive(kind: type) -> Callable:
    """Whole numbers >= 1, or numbers > 0."""
    return bounded(kind, 1) if kind is int else bounded(kind, 0, low_open=True)


def port(text: str) -> int:
    return bounded(int, 1, 65535)(text)


def version_number(text: str) -> int:
    """A version folder number: a positive integer (TF Serving ignores `-3`, `0` or `v3`)."""
    value = _number(text, int)
    problem = version_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def model_name(text: str) -> str:
    """A model name: one folder under the base path."""
    problem = model_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
