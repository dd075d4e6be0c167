"""Every file and folder a run names, checked before any work (no TensorFlow import, nothing written).

Each way a location can be wrong gets its own sentence: missing, a folder where a file is needed (or the
reverse), not readable, not writable, or a file sitting where a folder must be created.
"""

from __future__ import annotations

import os
from pathlib import Path

from tfsft.errors import ConfigError, DataError
from tfsft.modalities import modality_spec
from tfsft.paths import resolve


def writable_folder_problem(location: str, key: str) -> str | None:
    """Why folder `location` (created if missing) cannot be written; None if it can."""
    path = Path(location).expanduser()
    if path.exists() and not path.is_dir():
        return f"{key} = '{location}' is a file, not a folder. Point {key} at a folder (it is created if missing)."
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return (
            f"{key} = '{location}' cannot be created: '{existing}' is a file, not a folder. Point {key} at a "
            f"folder path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"{key} = '{location}' is not writable ('{existing}' does not allow writing for this user). "
            f"Point {key} at a folder you can write to, or fix its permissions."
        )
    return None


def _check_source(location: str | None, key: str, folder_ok: bool) -> None:
    if not location:
        return
    path = Path(resolve(location, what=key))
    if not path.exists():
        raise DataError(
            f"{key} = '{location}' does not exist (resolved to '{path.absolute()}'). Check the path; "
            f"relative paths are relative to the directory you run from."
        )
    if path.is_dir() and not folder_ok:
        raise DataError(
            f"{key} = '{location}' is a folder; give a CSV/TSV/JSONL file (folders of class folders are for images)."
        )
    if not os.access(path, os.R_OK):
        raise DataError(f"{key} = '{location}' is not readable by this user. Fix its permissions.")


def _check_file(location: str | None, key: str, what: str) -> None:
    if not location:
        return
    path = Path(resolve(location, what=key))
    if path.is_dir():
        raise ConfigError(f"{key} = '{location}' is a folder; give {what}.")
    if not path.is_file():
        raise ConfigError(f"{key} = '{location}' does not exist. Give {what}.")


def check_resume(resume: str) -> None:
    if resume in ("auto", "never"):
        return
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(
            f"--resume '{resume}' is not a folder. Use auto, never or a run directory (runs/<name>/<id>)."
        )
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"--resume '{resume}' is not a run directory (no config.yaml). Use auto, never or a run "
            f"directory (runs/<name>/<id>)."
        )


def check_run_inputs(config, resume: str = "auto") -> None:
    """Raise the first problem with the locations `config` names (data, weights, vocabulary, output folders)."""
    check_resume(resume)
    spec = modality_spec(config)
    for split in ("train", "validation", "test"):
        _check_source(getattr(config.data, split), f"data.{split}", folder_ok=spec.accepts_folders)
    problem = writable_folder_problem(config.output_dir, "output_dir")
    if problem:
        raise ConfigError(problem)
    if config.export.enabled:
        problem = writable_folder_problem(config.export.base_path, "export.base_path")
        if problem:
            raise ConfigError(problem)
    if config.text.vocabulary and config.text.vocabulary != "learn" and spec.reads_vocabulary:
        _check_file(config.text.vocabulary, "text.vocabulary", "a vocab.txt (one WordPiece token per line) or 'learn'")
    weights = config.model.backbone.weights
    if weights and weights not in ("none", "imagenet"):
        _check_file(
            weights,
            "model.backbone.weights",
            "a weights file (e.g. a '.weights.h5' saved by model.save_weights or a run's backbone.weights.h5)",
        )
