"""The run directory `runs/<name>/<id>/`: where every artifact of a run lands, and how a rerun finds it.

Rerunning the same command resumes the newest unfinished run of that name whose resolved config is
identical; anything else starts a new id, so an existing run directory is never overwritten.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tfsft.config import RunConfig, dump_config
from tfsft.errors import ConfigError

STATUS_FILE = "status.json"


@dataclass
class RunDir:
    path: Path
    resumed: bool
    created: bool
    scratch: bool = False  # a non-chief worker's private folder, deleted after training
    chief_path: Path | None = None  # set on non-chief workers: the run directory the chief writes

    @property
    def restore_checkpoints(self) -> Path:
        """Where a resume reads the last checkpoint: the chief's, on every worker."""
        return (self.chief_path or self.path) / "checkpoints" / "last"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def status(self) -> dict:
        file = self.path / STATUS_FILE
        return json.loads(file.read_text()) if file.exists() else {}

    def set_status(self, state: str, **extra) -> None:
        data = {**self.status(), "state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        tmp = self.path / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path / STATUS_FILE)


def _unfinished_twin(base: Path, config: RunConfig) -> Path | None:
    if not base.is_dir():
        return None
    wanted = config.to_dict()
    for candidate in sorted((p for p in base.iterdir() if p.is_dir()), reverse=True):
        status_file, config_file = candidate / STATUS_FILE, candidate / "config.yaml"
        if not (status_file.exists() and config_file.exists()):
            continue
        try:
            status = json.loads(status_file.read_text())
            previous = yaml.safe_load(config_file.read_text())
        except (ValueError, yaml.YAMLError):
            continue
        if status.get("state") in ("running", "interrupted") and previous == wanted:
            return candidate
    return None


def open_run_dir(config: RunConfig, resume: str = "auto", write: bool = True) -> RunDir:
    """`resume`: auto (continue an identical unfinished run), never, or the path of a run directory."""
    from tfsft.distribute import cluster_task

    kind, index, workers = cluster_task()
    if workers > 1:
        return _multi_worker_run_dir(config, resume, chief=write, task=f"{kind}-{index}")
    base = Path(config.output_dir) / config.name
    if resume not in ("auto", "never"):
        path = Path(resume)
        if not (path / "config.yaml").exists():
            raise ConfigError(
                f"--resume {resume}: not a run directory (no config.yaml). Use auto, never or a run path."
            )
        return RunDir(path, resumed=True, created=False)
    if resume == "auto":
        twin = _unfinished_twin(base, config)
        if twin is not None:
            return RunDir(twin, resumed=True, created=False)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    path, n = base / run_id, 1
    while path.exists():
        n += 1
        path = base / f"{run_id}-{n}"
    if write:
        path.mkdir(parents=True)
        dump_config(config, path / "config.yaml")
    return RunDir(path, resumed=False, created=write)


def _multi_worker_run_dir(config: RunConfig, resume: str, chief: bool, task: str) -> RunDir:
    """Workers of one cluster cannot agree on a timestamp, so the id comes from the config: `mw-<hash>-<k>`,
    k being the first attempt not yet finished (every worker sees the same folders at start). Non-chief workers
    write into a scratch folder inside it and restore from the chief's checkpoints."""
    import hashlib

    base = Path(config.output_dir) / config.name
    if resume not in ("auto", "never"):
        path = Path(resume)
    else:
        digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
        k = 1
        while True:
            path = base / f"mw-{digest}-{k}"
            state = json.loads((path / STATUS_FILE).read_text()).get("state") if (path / STATUS_FILE).exists() else None
            if state is None or (state in ("running", "interrupted") and resume == "auto"):
                break
            k += 1
    resumed = (path / STATUS_FILE).exists()
    if not chief:
        scratch = path / ".workers" / task
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        return RunDir(scratch, resumed=resumed, created=False, scratch=True, chief_path=path)
    created = not (path / "config.yaml").exists()
    path.mkdir(parents=True, exist_ok=True)
    if created:
        dump_config(config, path / "config.yaml")
    return RunDir(path, resumed=resumed, created=created)
