"""Loading what a finished run left behind: its config, class names and Keras model."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

from tfsft.errors import ConfigError

log = logging.getLogger(__name__)


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
    from tfsft.modalities import get_modality

    get_modality(config).adopt_loaded_model(model)  # runs as the run trained it (e.g. text's first-token layer)
    return config, classes, model


def load_model_file(path: Path):
    """A run's `model.keras` for inference, in Keras safe mode (no Python code deserialized), uncompiled.

    Uncompiled, Keras does not rebuild the optimizer or restore its state, which inference never reads: the state
    of a `mixed_float16` run (a loss-scale optimizer around AdamW) did not even load back."""
    import keras

    import tfsft.layers  # noqa: F401  (registers tfsft's layers for safe-mode loading)

    return keras.saving.load_model(path, safe_mode=True, compile=False)


@contextlib.contextmanager
def optimizer_state_skipped_quietly() -> Iterator[None]:
    """Load Keras weights without Keras's warning when the saved optimizer has a different number of slots.

    `model.keras` and `*.weights.h5` also hold the optimizer's state. Keras restores it only when the optimizer
    has exactly as many variables as were saved (layers unfrozen since, for one, add slots) and otherwise skips
    it with a warning. Where only the model's weights are needed, that skip is expected; a mismatch in the
    model's own layers still raises."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        yield


MIXED_POLICIES = ("mixed_bfloat16", "mixed_float16")


def use_float32_compute(model) -> str:
    """Make a loaded model (and each of its layers) compute in float32; the policy it was trained under.

    A run trained under `mixed_bfloat16` (tfsft's default on GPUs of compute capability 8+) or `mixed_float16`
    saves its layers with that policy, and a SavedModel exported from it would compute in half precision
    wherever it is served. CPUs without AVX-512 BF16 or AMX run bfloat16 on TensorFlow's reference kernels: the
    quickstart's model trained in bfloat16 answered 13 examples/s through its SavedModel against 113-133 for the
    same weights in float32 (TensorFlow's Eigen kernels, 2-core Xeon); with oneDNN capped to AVX2 its bfloat16
    matmul did not run at all. The variables of a mixed policy are float32 already: only the compute dtype
    changes (Keras reads it at every call)."""
    from tfsft.keras_internals import flatten_layers

    mixed = [layer for layer in [model, *flatten_layers(model)] if layer.dtype_policy.name in MIXED_POLICIES]
    if not mixed:
        return "float32"
    trained_under = "/".join(sorted({layer.dtype_policy.name for layer in mixed}))
    for layer in mixed:
        layer.dtype_policy = "float32"
    log.info("The model was trained under %s; it is evaluated and exported computing in float32.", trained_under)
    return trained_under
