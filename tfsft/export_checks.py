"""What an export refuses before it loads or writes anything: a run that did not complete (unless forced),
a model name that is not one folder, a version TF Serving would not serve."""

from __future__ import annotations

import json
from pathlib import Path

from tfsft.errors import TfsftError
from tfsft.versions import model_name_problem, version_problem


class ExportError(TfsftError):
    """The export could not be written or did not reproduce the Keras model."""


def run_state(run_dir: Path) -> str | None:
    """The state a run's status.json records ('completed', 'running', ...), or None when it has none."""
    try:
        state = json.loads((Path(run_dir) / "status.json").read_text()).get("state")
    except (OSError, ValueError, AttributeError):
        return None
    return state if isinstance(state, str) else None


def check_name_and_version(name: str, version: int | None) -> None:
    """Refuse a model name or version TF Serving would not serve (or that would land outside the base path)."""
    problem = model_name_problem(name)
    if problem:
        raise ExportError(
            f"The model name {problem}. It becomes the folder <base_path>/<name>/: pass --name "
            f"with a single folder name such as 'sentiment'."
        )
    if version is not None and version_problem(version):
        raise ExportError(f"--version {version_problem(version)}. Omit --version to take the next free one.")


def check_run_completed(run_dir: Path, force: bool) -> None:
    """Refuse a run that is not a folder, or whose status.json does not say completed (unless `force`)."""
    if not Path(run_dir).is_dir():
        what = "is a file, not a folder" if Path(run_dir).exists() else "does not exist"
        raise ExportError(f"The run '{run_dir}' {what}: pass the directory of a finished run (runs/<name>/<id>).")
    state = run_state(run_dir)
    if state != "completed" and not force:
        said = f"its status.json says '{state}'" if state else "it has no readable status.json"
        raise ExportError(
            f"The run '{run_dir}' did not complete: {said}. Export a completed run, or pass "
            f"--force to export its model as it is now."
        )
