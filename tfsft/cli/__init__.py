"""The command-line entry points, one module per command; the libraries they call live outside this package.

- `startup`   before the first TensorFlow/Keras import: quiet C++ start-up, `import keras` without sklearn/pyplot
- `common`    shared plumbing: logging, config loading, user errors as one paragraph,
              argparse types that refuse bad values up front
- `train`     `python -m tfsft.train` / `tfsft-train`: fine-tune from a YAML config (tfsft.trainer)
- `tune`      `python -m tfsft.tune` / `tfsft-tune`: hyperparameter search (tfsft.tuning)
- `evaluate`  `python -m tfsft.evaluate` / `tfsft-evaluate`: re-evaluate a finished run (tfsft.evaluation)
- `predict`   `python -m tfsft.predict` / `tfsft-predict`: run an exported SavedModel on raw inputs (tfsft.predict)
- `serve`     `python -m tfsft.serve` / `tfsft-serve`: the TF-Serving-compatible REST server (tfsft.serving)

The `python -m tfsft.<command>` modules are aliases of these. Importing `tfsft.cli` loads only `startup` and `common`
(no TensorFlow): scripts use `from tfsft.cli import prepare_tensorflow_import` before their first TF import.
"""

from tfsft.cli.common import (
    QUICKSTART,
    REPO_CONFIGS,
    format_error,
    positive_int,
    run_main,
    run_with_config,
    setup_logging,
)
from tfsft.cli.startup import prepare_tensorflow_import

__all__ = [
    "QUICKSTART",
    "REPO_CONFIGS",
    "format_error",
    "positive_int",
    "prepare_tensorflow_import",
    "run_main",
    "run_with_config",
    "setup_logging",
]
