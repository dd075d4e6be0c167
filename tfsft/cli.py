"""Shared plumbing of the `python -m tfsft.*` entry points: logging, quiet TF start-up, user errors."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tfsft.errors import TfsftError

if TYPE_CHECKING:
    from tfsft.config import RunConfig

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
QUICKSTART = REPO_CONFIGS / "quickstart.yaml"


def quiet_tensorflow() -> None:
    """Keep TF's C++ start-up chatter (CUDA probing, oneDNN notes) out of the user's terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "h5py", "matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_with_config(config_files: list, overrides: list, verbose: bool, command: Callable[[RunConfig], None]) -> int:
    """The start every config-driven entry point shares: quiet TF start-up, logging, then load the merged config
    (its errors come before any TF work) and run `command(config)`; user errors end as one paragraph."""
    quiet_tensorflow()
    setup_logging(verbose)

    def run():
        from tfsft.config import load_config

        command(load_config(config_files, overrides))

    return run_main(run)


def run_main(fn) -> int:
    """Run `fn()`, turning a TfsftError into one paragraph on stderr and its exit code."""
    try:
        fn()
        return 0
    except TfsftError as exc:
        message = textwrap.fill(str(exc), width=110)
        print(f"\nerror: {message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint is kept; rerun the same command to resume.", file=sys.stderr)
        return 130
