"""Shared plumbing of the `python -m tfsft.*` entry points: logging, quiet TF start-up, user errors."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from pathlib import Path

from tfsft.errors import TfsftError

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
