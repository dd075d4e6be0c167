"""Hyperparameter search: the config's `tune:` section as a Keras Tuner search whose trials are tfsft runs.

Every trial is a normal `tfsft.trainer.train` of the base config with the trial's values applied to their
dotted fields (same data path, callbacks, checkpoints and resume), in `<search>/trials/trial_<id>/`. Keras
Tuner's oracles pick the values (random, Bayesian, Hyperband, grid) and its chief/worker protocol distributes
trials (`KERASTUNER_*` variables). The search directory is named after the resolved config, so rerunning the same
command continues the search: finished trials are kept, an interrupted one is retried and its run resumes from
its last checkpoint.

The space and a trial's values are tfsft.tuning_space; the outputs (results table, best config, plot, HParams
logs) tfsft.tuning_results.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfsft.config import RunConfig, TuneConfig
from tfsft.errors import ConfigError, TfsftError
from tfsft.tracking import SearchParent
from tfsft.tuning_results import (
    best_config,
    collect_results,
    plot_objective,
    write_hparams,
    write_hparams_config,
    write_results,
)
from tfsft.tuning_space import check_space_values, config_for_trial, declare, search_settings, trial_overrides

log = logging.getLogger(__name__)

RESERVED = "tuner/"  # Keras Tuner's own Hyperband entries (tuner/epochs, tuner/initial_epoch, ...)


# ----------------------------------------------------------------------------------------- directories
def search_id(config: RunConfig, name: str | None) -> str:
    """Same resolved config (max_trials aside, so it can be raised to extend a search) -> same search folder."""
    raw = config.to_dict()
    raw["tune"] = {k: v for k, v in raw["tune"].items() if k != "max_trials"}
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name or config.name}-{digest}"


@dataclass
class SearchPaths:
    root: Path

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def trial_info(self) -> Path:
        return self.root / "trial_info"

    @property
    def hparams(self) -> Path:
        return self.root / "hparams"

    @property
    def keras_tuner(self) -> Path:
        return self.root / "keras_tuner"


# ----------------------------------------------------------------------------------------- objective
def objective_value(history: list[dict], objective: str, direction: str) -> float:
    values = [epoch[objective] for epoch in history if epoch.get(objective) is not None]
    if not values:
        logged = sorted({k for epoch in history for k in epoch if k.startswith("val_")})
        raise ObjectiveError(
            f"tune.objective = '{objective}' was not logged by the trial. Validation metrics logged: "
            f"{', '.join(logged) or 'none (is there a validation split?)'}. Set tune.objective to one of them."
        )
    return min(values) if direction == "min" else max(values)


def rss_mb() -> float:
    """Resident memory of this process now (not the peak), in MiB."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the peak, which still shows growth
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _keras_tuner() -> Any:  # untyped: its classes are subclassed and called dynamically
    import keras_tuner

    return keras_tuner


class ObjectiveError(ConfigError):
    """The objective is not a logged metric: every trial would fail the same way, so the search stops."""


# ----------------------------------------------------------------------------------------- the tuner
def build_oracle(tune: TuneConfig, base: RunConfig):
    kt = _keras_tuner()
    objective = kt.Objective(tune.objective, direction=tune.objective_direction())
    seed = tune.seed if tune.seed is not None else base.seed
    common = dict(objective=objective, seed=seed, max_consecutive_failed_trials=3)
    if tune.tuner == "random":
        return kt.oracles.RandomSearchOracle(max_trials=tune.max_trials, **common)
    if tune.tuner == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=tune.max_trials, **common)
    if tune.tuner == "grid":
        return kt.oracles.GridSearchOracle(max_trials=tune.max_trials, **common)
    return kt.oracles.HyperbandOracle(
        max_epochs=tune.max_epochs or base.training.epochs, factor=tune.hyperband_factor, **common
    )


def make_tuner(base: RunConfig, paths: SearchPaths, verbose: int = 0):
    """A Keras Tuner BaseTuner whose trials are tfsft runs of `base` with the trial's values."""
    kt = _keras_tuner()
    tune = search_settings(base)

    class SpaceModel(kt.HyperModel):  # type: ignore[name-defined]  # keras_tuner, imported lazily
        def build(self, hp):
            self.decoders = declare(hp, tune)

    class TfsftTuner(kt.engine.base_tuner.BaseTuner):  # type: ignore[name-defined]
        def run_trial(self, trial, *args, **kwargs):
            return run_trial(base, paths, trial, self.hypermodel.decoders, verbose)

    hypermodel = SpaceModel()
    hypermodel.build(kt.HyperParameters())  # decoders exist even when the tuner reloads instead of declaring
    paths.root.mkdir(parents=True, exist_ok=True)
    tuner = TfsftTuner(
        oracle=build_oracle(tune, base),
        hypermodel=hypermodel,
        directory=str(paths.root),
        project_name="keras_tuner",
        overwrite=False,
    )
    if tune.tuner != "hyperband" and hasattr(tuner.oracle, "max_trials"):
        tuner.oracle.max_trials = tune.max_trials  # a rerun may raise max_trials to extend the search
    return tuner


def run_trial(base: RunConfig, paths: SearchPaths, trial, decoders: dict, verbose: int) -> dict:
    """One trial: `executions_per_trial` tfsft trainings; returns {objective: mean of their best values}."""
    kt = _keras_tuner()
    from tfsft.trainer import train

    tune = search_settings(base)
    values = dict(trial.hyperparameters.values)
    overrides = trial_overrides(values, tune, decoders)
    fields: dict[str, Any] = {"output_dir": str(paths.trials), "export.enabled": False}
    if RESERVED + "epochs" in values:  # Hyperband's budget for this trial
        fields["training.epochs"] = int(values[RESERVED + "epochs"])
    started, scores, run_dirs, peaks = time.time(), [], [], []
    log.info("Trial %s: %s", trial.trial_id, overrides)
    for execution in range(tune.executions_per_trial):
        name = f"trial_{trial.trial_id}" + (f"_e{execution}" if tune.executions_per_trial > 1 else "")
        try:
            config = config_for_trial(base, overrides, name=name, seed=base.seed + execution, **fields)
        except ConfigError as exc:
            raise kt.errors.FailedTrialError(f"invalid combination {overrides}: {exc}") from None
        try:
            if tune.isolate_trials:
                history, run_dir, peak = train_in_child(config, verbose)
                peaks.append(peak)
            else:
                result = train(config, resume="auto", verbose=verbose)
                history, run_dir = result.history, result.run_dir
                del result
                gc.collect()
        except TfsftError as exc:
            if exc.exit_code == 3:  # the loss diverged: a bad point of the space, not a broken search
                raise kt.errors.FailedTrialError(str(exc)) from None
            raise _fatal(exc) from None
        try:
            scores.append(objective_value(history, tune.objective, tune.objective_direction()))
        except ObjectiveError as exc:
            raise _fatal(exc) from None
        run_dirs.append(str(run_dir))
    score = sum(scores) / len(scores)
    info = {
        "trial_id": trial.trial_id,
        "overrides": overrides,
        "objective": score,
        "executions": scores,
        "epochs": fields.get("training.epochs", base.training.epochs),
        "wall_s": round(time.time() - started, 1),
        "rss_mb": round(rss_mb(), 1),
        "trial_peak_rss_mb": round(max(peaks), 1) if peaks else None,
        "run_dirs": run_dirs,
        "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"),
    }
    paths.trial_info.mkdir(parents=True, exist_ok=True)
    (paths.trial_info / f"{trial.trial_id}.json").write_text(json.dumps(info, indent=1))
    write_hparams(paths, tune, trial.trial_id, overrides, score)
    return {tune.objective: score}


def _train_child(config: RunConfig, verbose: int, connection) -> None:
    """Entry point of a trial's child process: train, send back (history, run dir, peak RSS) or the error."""
    import resource

    try:
        from tfsft.cli import prepare_tensorflow_import

        prepare_tensorflow_import()
        from tfsft.trainer import train

        result = train(config, resume="auto", verbose=verbose)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        connection.send(("ok", (result.history, str(result.run_dir), peak)))
    except TfsftError as exc:
        connection.send(("tfsft_error", (str(exc), exc.exit_code)))
    except BaseException as exc:  # anything else: the parent reports it with the child's traceback text
        import traceback

        connection.send(("error", "".join(traceback.format_exception(exc))))
    finally:
        connection.close()


def train_in_child(config: RunConfig, verbose: int) -> tuple[list, Path, float]:
    """Train one trial in a fresh process, so that nothing TensorFlow keeps between runs (traced functions,
    tf.data graphs, allocator arenas) can pile up in the search process: its memory stays flat however many
    trials run. Costs a TensorFlow import (a few seconds) per trial."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_train_child, args=(config, verbose, sender), name="tfsft-trial")
    child.start()
    sender.close()
    try:
        kind, payload = receiver.recv()
    except EOFError:
        child.join()
        raise TfsftError(
            f"The trial's training process died (exit code {child.exitcode}), e.g. killed for "
            f"memory. Lower training.batch_size or text.max_length and run the search again."
        ) from None
    child.join()
    if kind == "ok":
        history, run_dir, peak = payload
        return history, Path(run_dir), peak
    if kind == "tfsft_error":
        message, exit_code = payload
        error = TfsftError(message)
        error.exit_code = exit_code
        raise error
    raise RuntimeError(f"The trial's training process failed:\n{payload}")


def _fatal(exc: TfsftError):
    """Keras Tuner keeps going after ordinary errors; a user mistake that every trial would repeat stops it."""
    kt = _keras_tuner()

    class FatalTfsftError(type(exc), kt.errors.FatalError):  # type: ignore[misc,name-defined]  # exc's own class
        pass

    fatal = FatalTfsftError(str(exc))
    fatal.exit_code = exc.exit_code
    return fatal


# ----------------------------------------------------------------------------------------- entry
@dataclass
class SearchResult:
    root: Path
    rows: list[dict]
    best_config_path: Path | None


def run_search(base: RunConfig, name: str | None = None, verbose: int = 0) -> SearchResult:
    """Run (or continue) the search of `base.tune`; on the chief or a single process, write the outputs."""
    tune = search_settings(base)
    check_space_values(base)
    root = Path(base.output_dir) / "tune" / search_id(base, name)
    paths = SearchPaths(root)
    worker = _is_worker()
    if not worker:
        root.mkdir(parents=True, exist_ok=True)
        (root / "search_config.yaml").write_text(yaml.safe_dump(base.to_dict(), sort_keys=False))
        write_hparams_config(paths, tune)
    parent = SearchParent(base, root.name)  # trials log as child runs (MLflow) / in one group (W&B)
    tuner = make_tuner(parent.trial_base(base), paths, verbose)
    log.info("Search directory: %s", root)
    try:
        tuner.search()
    except RuntimeError as exc:
        parent.finish(root, None, ok=False)
        if "consecutive failures" not in str(exc):
            raise
        failed = [t for t in tuner.oracle.trials.values() if t.message]
        last = failed[-1].message.strip().splitlines()[-1] if failed else str(exc)
        raise TfsftError(
            f"The search stopped: {len(failed)} trial(s) failed in a row; the last one with: {last} "
            f"Each trial's run directory is under {paths.trials}. Narrow tune.space (e.g. a lower "
            f"learning-rate range) and run the same command again: finished trials are kept."
        ) from None
    if worker:
        return SearchResult(root, [], None)
    rows = collect_results(tuner, paths, tune)
    write_results(rows, paths, tune)
    if rows:
        plot_objective(rows, tune, root / "objective_vs_hparams.png")
    best = best_config(base, rows, tune, tuner.hypermodel.decoders)
    best_path = None
    if best is not None:
        best_path = root / "best_config.yaml"
        best_path.write_text(yaml.safe_dump(best, sort_keys=False))
    parent.finish(root, best, ok=True)
    return SearchResult(root, rows, best_path)


def _is_worker() -> bool:
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", "")
