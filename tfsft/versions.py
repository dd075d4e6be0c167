"""Version folders of an exported model, `<base_path>/<name>/<version>/`, as TF Serving reads them.

One set of rules shared by export (which version to write), serve (which versions to load), predict
(which version to run) and scripts/bench_serve.py:

- a version folder is named by an integer written in ASCII digits (`3`, not `v3`, `-3` or `٣`) that
  fits TF Serving's int64; hidden `.tmp-*` folders of exports in progress never count;
- a *servable* version also holds its marker file (`saved_model.pb` for TF Serving);
- a model name is a single folder name that works in a TF Serving URL.

TF-free (standard library only), so the light tools can use it without loading TensorFlow.
"""

from __future__ import annotations

import re
from pathlib import Path

SAVED_MODEL_FILE = "saved_model.pb"
MAX_VERSION = 2**63 - 1  # TF Serving parses version folders as int64
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # as config.py's run names, no leading dot


def version_of(folder_name: str) -> int | None:
    """The version number a folder name stands for, or None when it is not a version folder."""
    if not (folder_name.isascii() and folder_name.isdigit()):
        return None
    version = int(folder_name)
    return version if version <= MAX_VERSION else None


def version_folders(model_dir: Path, marker: str | None = SAVED_MODEL_FILE) -> dict[int, Path]:
    """{version: folder} of `model_dir`'s version folders that hold `marker` (any folder when marker is None)."""
    try:
        children = list(Path(model_dir).iterdir())
    except OSError:  # missing, not a folder, or removed while we look
        return {}
    found = {}
    for child in children:
        version = version_of(child.name)
        if version is None or not child.is_dir():
            continue
        if marker is None or (child / marker).is_file():
            found[version] = child
    return found


def latest_version_dir(model_dir: Path, marker: str | None = SAVED_MODEL_FILE) -> Path | None:
    """The highest version folder holding `marker`, or None."""
    versions = version_folders(model_dir, marker)
    return versions[max(versions)] if versions else None


def next_version(model_dir: Path) -> int:
    """The version an export takes by default: one above every version folder, complete or not."""
    taken = version_folders(model_dir, marker=None)
    return max(taken) + 1 if taken else 1


def version_problem(version: int) -> str | None:
    """Why `version` cannot name a new version folder (None if it can)."""
    if isinstance(version, bool) or not isinstance(version, int):
        return f"must be a whole number, got {version!r}"
    if version < 1:
        return f"must be a positive integer (1, 2, ...), got {version}; TF Serving ignores other folder names"
    if version > MAX_VERSION:
        return f"must be at most {MAX_VERSION} (TF Serving reads versions as int64), got {version}"
    return None


def model_name_problem(name: str) -> str | None:
    """Why `name` cannot be a model folder under the base path (None if it can)."""
    if not name:
        return "must not be empty"
    if "/" in name or "\\" in name:
        return f"must be a single folder name without '/' or '\\', got '{name}'"
    if name.startswith("."):
        return f"must not start with '.' (hidden, or outside the base path), got '{name}'"
    if not MODEL_NAME_PATTERN.fullmatch(name):
        return f"may hold only letters, digits, '_', '-' and '.', got '{name}'"
    return None
