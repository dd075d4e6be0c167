"""Command-line argument checking shared by entry points: argparse types that refuse bad values before any work.

A refused argument is one paragraph on stderr naming the option, the value received and what is
allowed, with exit code 2 (argparse's code for usage errors), never a traceback or a usage dump.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn

from tfsft.versions import model_name_problem, version_problem


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
        raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                         f"got '{text}'") from None
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

