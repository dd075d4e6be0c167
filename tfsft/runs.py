"""Loading what a finished run left behind: its config, class names and Keras model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tfsft.errors import ConfigError


def load_run(run_dir: str | Path):
    """(config, class names, Keras model) of a finished run directory."""
    from tfsft.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(
            f"'{run_dir}' {'is a file' if run_dir.exists() else 'does not exist'}: pass the directory "
            f"of a finished run (runs/<name>/<id>)."
        )
    for needed in ("config.yaml", "classes.json", "model.keras"):
        if not (run_dir / needed).exists():
            raise ConfigError(
                f"'{run_dir}' has no {needed}: pass the directory of a finished run (runs/<name>/<id>), "
                f"whose status.json says completed."
            )
    config = load_config([run_dir / "config.yaml"])
    try:
        classes = json.loads((run_dir / "classes.json").read_text())
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"'{run_dir / 'classes.json'}' cannot be read ({exc}); the run directory is damaged."
        ) from None
    try:
        model = load_model_file(run_dir / "model.keras")
    except (ValueError, OSError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"'{run_dir / 'model.keras'}' cannot be loaded ({type(exc).__name__}: {reason}); the run "
            f"directory is damaged or from an incompatible version. Retrain, or use another "
            f"run."
        ) from None
    return config, classes, model


def load_model_file(path: Path):
    """A run's `model.keras`, in Keras safe mode (no Python code deserialized)."""
    import keras

    import tfsft.layers  # noqa: F401  (registers tfsft's layers for safe-mode loading)
    import tfsft.optim  # noqa: F401

    with warnings.catch_warnings():
        # The saved optimizer state is irrelevant for inference; Keras warns when its slot count differs.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.saving.load_model(path, safe_mode=True)
