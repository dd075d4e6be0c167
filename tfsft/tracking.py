"""Experiment trackers from the config's `tracking:` section: Weights & Biases and MLflow.

Each tracker starts before anything is written (a bad URI, no network or a missing package fails the run there,
or is a warning with `tracking.required: false`), then receives the resolved config as parameters, every
per-step and per-epoch scalar (through `log_metrics`, called by the step logger), and at the end the final
metrics, the report, the plots and (MLflow) the exported SavedModel. Tuning trials become child runs of one
parent run (MLflow) or one run group (W&B).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from tfsft.config import MlflowConfig, RunConfig, WandbConfig
from tfsft.errors import ConfigError

log = logging.getLogger(__name__)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and None as their JSON text (trackers want scalars)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


def final_scalars(metrics: dict) -> dict:
    """metrics.json's numbers, flattened (`test.accuracy`, `validation.macro_f1`, ...), per-class tables left out."""
    skip = ("per_class", "confusion_matrix", "class_names")
    tree = {
        split: {k: v for k, v in values.items() if k not in skip} if isinstance(values, dict) else values
        for split, values in metrics.items()
    }
    return {k: float(v) for k, v in flatten(tree).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ----------------------------------------------------------------------------------------- MLflow
def mlflow_uri(cfg: MlflowConfig) -> str:
    """A server URL as given; a local folder (the default `mlruns`) as an absolute file: URI."""
    parsed = urlparse(cfg.tracking_uri)
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        return cfg.tracking_uri
    return Path(cfg.tracking_uri).expanduser().resolve().as_uri()


class MlflowTracker:
    name = "mlflow"

    def __init__(self, cfg: MlflowConfig, config: RunConfig, run_name: str | None = None, tags: dict | None = None):
        from mlflow.tracking import MlflowClient

        uri = mlflow_uri(cfg)
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode behind this switch; a local folder needs no
            # server or database, which is what a default should need.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        else:  # fail fast when the server is unreachable instead of retrying for minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.cfg, self.uri = cfg, uri
        self.client = MlflowClient(tracking_uri=uri)
        experiment_name = cfg.experiment or config.name
        experiment = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        tags = dict(tags or {})
        if cfg.parent_run_id:
            tags["mlflow.parentRunId"] = cfg.parent_run_id
        self.run_id = self.client.create_run(
            self.experiment_id, run_name=run_name or config.name, tags=tags
        ).info.run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # the store's batch limit
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, scalars: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def set_tags(self, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_file(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_folder(self, path: Path, folder: str) -> None:
        self.client.log_artifacts(self.run_id, str(path), folder)

    def log_model(self, saved_model: Path) -> None:
        if self.cfg.log_model:
            self.log_folder(saved_model, "saved_model")

    def finish(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


# ----------------------------------------------------------------------------------------- W&B
class WandbTracker:
    name = "wandb"

    def __init__(self, cfg: WandbConfig, config: RunConfig, run_name: str | None = None):
        import wandb

        directory = Path(cfg.dir or config.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode,
            tags=list(cfg.tags) or None,
            group=cfg.group,
            name=run_name or config.name,
            config=config.to_dict(),
            dir=str(directory),
            reinit="create_new",
            settings=wandb.Settings(init_timeout=60, silent=True),
        )

    def log_params(self, params: dict) -> None:
        pass  # the resolved config went in with init (W&B's "config" is its parameter table)

    def log_metrics(self, scalars: dict, step: int) -> None:
        self.run.log(dict(scalars), step=int(step))

    def set_tags(self, tags: dict) -> None:
        self.run.summary.update({f"tfsft/{k}": str(v) for k, v in tags.items()})

    def log_file(self, path: Path, folder: str | None = None) -> None:
        self.run.save(str(path), base_path=str(path.parent if folder is None else path.parent.parent), policy="now")

    def log_folder(self, path: Path, folder: str) -> None:
        for file in sorted(Path(path).rglob("*")):
            if file.is_file():
                self.run.save(str(file), base_path=str(Path(path).parent), policy="now")

    def log_model(self, saved_model: Path) -> None:
        pass  # W&B gets the metrics, report and plots; the SavedModel goes to MLflow or TF Serving

    def log_summary(self, scalars: dict) -> None:
        self.run.summary.update(scalars)

    def finish(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


# ----------------------------------------------------------------------------------------- together
class Trackers:
    """The run's started trackers; an empty one does nothing."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log_metrics(self, scalars: dict, step: int) -> None:
        for tracker in self.trackers:
            try:
                tracker.log_metrics(scalars, step)
            except Exception as exc:  # a tracker hiccup mid-run must not cost the training
                log.warning("%s: could not log metrics at step %d: %s", tracker.name, step, exc)

    def start_run(self, config: RunConfig, run_dir: Path) -> None:
        for tracker in self.trackers:
            tracker.log_params(flatten(config.to_dict()))
            tracker.set_tags({"run_dir": str(run_dir)})

    def finish_run(self, run_dir: Path, metrics: dict, exported: Path | None = None) -> None:
        scalars = final_scalars(metrics)
        for tracker in self.trackers:
            try:
                tracker.log_metrics({f"final/{k}": v for k, v in scalars.items()}, _last_step(run_dir))
                if isinstance(tracker, WandbTracker):
                    tracker.log_summary({f"final/{k}": v for k, v in scalars.items()})
                for name in ("report.md", "metrics.json", "config.yaml", "history_steps.csv", "history.csv"):
                    if (run_dir / name).exists():
                        tracker.log_file(run_dir / name)
                if (run_dir / "plots").is_dir():
                    tracker.log_folder(run_dir / "plots", "plots")
                if exported is not None:
                    tracker.log_model(exported)
            except Exception as exc:
                log.warning("%s: could not log the final results: %s", tracker.name, exc)

    def finish(self, ok: bool) -> None:
        for tracker in self.trackers:
            try:
                tracker.finish(ok)
            except Exception as exc:
                log.warning("%s: could not close the run: %s", tracker.name, exc)


def _last_step(run_dir: Path) -> int:
    from tfsft.step_history import FILE_NAME, read_rows

    file = run_dir / FILE_NAME
    rows = read_rows(file) if file.exists() else []
    return max((r.get("step", 0) for r in rows), default=0)


EXTRA = {"wandb": "wandb", "mlflow": "mlflow"}


def start_trackers(config: RunConfig, run_name: str | None = None) -> Trackers:
    """Start every configured tracker, or fail (ConfigError) / warn (`tracking.required: false`) for each that
    cannot start. Called before the run directory is created."""
    started = []
    wanted = [(name, getattr(config.tracking, name)) for name in ("mlflow", "wandb")]
    for name, cfg in wanted:
        if cfg is None:
            continue
        try:
            started.append(
                MlflowTracker(cfg, config, run_name) if name == "mlflow" else WandbTracker(cfg, config, run_name)
            )
        except ImportError:
            _fail(
                config,
                f"tracking.{name} is configured but the {name} package is not installed. Install it with "
                f"pip install 'tfsft[{EXTRA[name]}]', or remove tracking.{name} from the config",
            )
        except Exception as exc:  # network, URI, credentials: whatever the client raises
            where = mlflow_uri(cfg) if name == "mlflow" else f"project {cfg.project!r} ({cfg.mode})"
            _fail(
                config,
                f"tracking.{name} could not start a run at {where}: {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0].rstrip('.') if str(exc).strip() else ''}. Check the setting "
                f"(and the network or credentials), use an offline mode (wandb mode: offline, a local "
                f"mlflow tracking_uri)",
            )
    return Trackers(started)


def _fail(config: RunConfig, message: str) -> None:
    if config.tracking.required:
        raise ConfigError(message + ", or set tracking.required: false to train without it.")
    log.warning("%s. Training goes on without it (tracking.required: false).", message)
    print(f"warning: {message}. Training goes on without it (tracking.required: false).", flush=True)


# ----------------------------------------------------------------------------------------- tuning
class SearchParent:
    """A search's parent run (MLflow) / run group (W&B): `trial_base` puts every trial under it."""

    def __init__(self, base: RunConfig, search_name: str):
        self.mlflow: MlflowTracker | None = None
        self.space = list(base.tune.space) if base.tune else []
        fields: dict = {}
        if base.tracking.wandb is not None:
            fields["tracking.wandb.group"] = base.tracking.wandb.group or search_name
        if base.tracking.mlflow is not None and base.tracking.mlflow.parent_run_id is None:
            try:
                self.mlflow = _search_run(base, search_name)
                fields["tracking.mlflow.parent_run_id"] = self.mlflow.run_id
            except ImportError:
                _fail(
                    base,
                    "tracking.mlflow is configured but the mlflow package is not installed. Install it "
                    "with pip install 'tfsft[mlflow]', or remove tracking.mlflow from the config",
                )
            except Exception as exc:
                _fail(
                    base,
                    f"tracking.mlflow could not start the search's parent run at "
                    f"{mlflow_uri(base.tracking.mlflow)}: {type(exc).__name__}: {exc}",
                )
        self.fields = fields

    def trial_base(self, base: RunConfig) -> RunConfig:
        from tfsft.config import apply_overrides, validate

        if not self.fields:
            return base
        return validate(apply_overrides(base.to_dict(), [f"{k}={json.dumps(v)}" for k, v in self.fields.items()]))

    def finish(self, root: Path, best: dict | None, ok: bool) -> None:
        if self.mlflow is None:
            return
        try:
            for name in ("results.csv", "results.md", "best_config.yaml", "objective_vs_hparams.png"):
                if (root / name).exists():
                    self.mlflow.log_file(root / name)
            if best is not None:
                self.mlflow.set_tags({f"best.{k}": v for k, v in flatten(best).items() if k in self.space})
        except Exception as exc:
            log.warning("mlflow: could not log the search results: %s", exc)
        self.mlflow.finish(ok)


def _search_run(base: RunConfig, search_name: str) -> MlflowTracker:
    """The search's parent run: the one already tagged with this search (a rerun continues it), else a new one."""
    assert base.tracking.mlflow is not None
    existing = _existing_search_run(base, search_name)
    if existing is None:
        tracker = MlflowTracker(base.tracking.mlflow, base, run_name=search_name, tags={"tfsft.search": search_name})
        tracker.log_params(flatten({"tune": base.to_dict()["tune"]}))
        return tracker
    tracker = MlflowTracker.__new__(MlflowTracker)
    tracker.cfg, tracker.uri, tracker.client, tracker.experiment_id, tracker.run_id = existing
    tracker.client.update_run(tracker.run_id, status="RUNNING")
    return tracker


def _existing_search_run(base: RunConfig, search_name: str):
    from mlflow.tracking import MlflowClient

    cfg = base.tracking.mlflow
    assert cfg is not None
    uri = mlflow_uri(cfg)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.experiment or base.name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`tfsft.search` = '{search_name}'", max_results=1
    )
    return (cfg, uri, client, experiment.experiment_id, runs[0].info.run_id) if runs else None
