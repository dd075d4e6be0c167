"""Orchestrate one run: data -> strategy scope (build, freeze, compile) -> fit -> evaluate -> artifacts."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from tfsft.callbacks import EarlyStopping, Monitors, ResumableCheckpoint, TrainingState
from tfsft.config import RunConfig
from tfsft.data import Splits, load_splits
from tfsft.distribute import (
    distribute_global_batches,
    drop_batches_smaller_than,
    is_chief,
    is_multi_worker,
    make_strategy,
    patch_keras_for_multi_worker,
    resolve_jit_compile,
    set_precision,
    with_class_weights,
)
from tfsft.errors import ConfigError, TfsftError, TrainingAborted
from tfsft.evaluation import evaluate_run, validation_batches
from tfsft.freezing import FreezePlan, FreezingCallback
from tfsft.learning_rate import build_schedule
from tfsft.modalities import get_modality
from tfsft.modalities.base import CacheFills, Modality
from tfsft.model import build_model_and_plan, class_weight_map, loss_for, metrics_for
from tfsft.optim import build_optimizer
from tfsft.regularization import PretrainedAnchor, build_anchor
from tfsft.rundir import RunDir, open_run_dir
from tfsft.runs import load_model_file, optimizer_state_skipped_quietly
from tfsft.runtime import log_choices
from tfsft.step_logging import monitoring_callbacks
from tfsft.tracking import Trackers, start_trackers

log = logging.getLogger(__name__)
# Keras warns that `shuffle` is ignored for tf.data input; our pipelines shuffle themselves.
warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: list[dict]


@dataclass
class Prepared:
    """Everything built before `fit`; tests use it to inspect a model mid-way."""

    config: RunConfig
    run: RunDir
    splits: Splits
    modality: Modality
    strategy: tf.distribute.Strategy
    model: keras.Model
    backbone: keras.Model
    plan: FreezePlan
    steps_per_epoch: int
    batch_size: int  # global: per-replica batch x replicas
    targets: dict
    anchor: PretrainedAnchor | None = None  # regularization.pretrained_anchor, captured before any restore


def _steps_per_epoch(config: RunConfig, n_train: int, batch_size: int) -> int:
    steps = math.ceil(n_train / batch_size)
    if config.training.steps_per_epoch:
        steps = min(steps, config.training.steps_per_epoch)
    return max(steps, 1)


_runs_prepared = 0  # in this process: a model from an earlier run may hold memory that the next one frees


def prepare(config: RunConfig, resume: str = "auto") -> Prepared:
    """Read data, open the run directory, build and compile the model, restore a checkpoint if resuming."""
    # A fresh Keras session per run: deterministic layer names (checkpoints and weight paths line up across
    # runs in one process) and no memory held by earlier models (tuning runs many trials). The garbage
    # collection that frees it (~0.2 s after TensorFlow's import) is skipped for a process's first run.
    from tfsft.preflight import check_run_inputs

    global _runs_prepared
    check_run_inputs(config, resume)  # every location the config names, before anything is read or written
    keras.backend.clear_session(free_memory=_runs_prepared > 0)
    _runs_prepared += 1
    keras.utils.set_random_seed(config.seed)
    log_choices(log)
    chief = is_chief()
    strategy = make_strategy(config.distribute)
    modality = get_modality(config)
    splits = load_splits(config, modality.read)  # data errors surface before anything is written
    run = open_run_dir(config, resume, write=chief)
    try:
        return _build(config, run, splits, modality, strategy)
    except TfsftError:
        if run.created:  # a failed start leaves nothing behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _global_batch_size(config: RunConfig, strategy: tf.distribute.Strategy) -> int:
    """The batch one step takes over all replicas; each replica needs at least one example of it."""
    batch_size = config.training.global_batch_size(strategy.num_replicas_in_sync)
    if batch_size < strategy.num_replicas_in_sync:
        raise ConfigError(
            f"training.batch_size = {batch_size} is smaller than the {strategy.num_replicas_in_sync} "
            f"replicas it is split across: every replica needs at least one example per step. Use "
            f"a batch_size of at least {strategy.num_replicas_in_sync}, or set "
            f"training.per_replica_batch_size instead."
        )
    return batch_size


def _build(
    config: RunConfig, run: RunDir, splits: Splits, modality: Modality, strategy: tf.distribute.Strategy
) -> Prepared:
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    run.set_status("running", resumed=run.resumed)
    (run / "classes.json").write_text(json.dumps(splits.classes.names, indent=1))
    splits.bad.write(run / "bad_records.csv")
    print(f"Data: {splits.summary()}", flush=True)
    if splits.bad.items:
        print(f"{len(splits.bad.items)} bad records skipped; see {run / 'bad_records.csv'}", flush=True)

    precision = set_precision(config.distribute)
    modality.prepare(splits.train, run.path)
    num_outputs = len(splits.classes) if splits.classes.names else 1
    targets = {
        name: splits.classes.targets(getattr(splits, name).labels, config.task.type)
        for name in ("train", "validation", "test")
        if getattr(splits, name) is not None
    }
    batch_size = _global_batch_size(config, strategy)
    steps_per_epoch = _steps_per_epoch(config, len(splits.train), batch_size)
    total_steps = steps_per_epoch * config.training.epochs

    with strategy.scope():
        backbone, model, plan = build_model_and_plan(config, modality, num_outputs)
        optimizer = build_optimizer(config.optimizer, build_schedule(config, total_steps, steps_per_epoch), model)
        # Built from the freshly loaded backbone: a checkpoint is only restored later, in fit_and_evaluate.
        anchor = build_anchor(config.regularization.pretrained_anchor, model, backbone, modality, optimizer)
        model.compile(
            optimizer=optimizer,
            loss=loss_for(config),
            metrics=metrics_for(config, num_outputs),
            jit_compile=resolve_jit_compile(config.training.jit_compile),
            steps_per_execution=config.training.steps_per_execution,
        )
        plan.start(model, optimizer)
        patch_keras_for_multi_worker(model, strategy)
    log.info(
        "Precision policy %s, strategy %s (%d replicas), global batch %d",
        precision,
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
        batch_size,
    )
    return Prepared(
        config, run, splits, modality, strategy, model, backbone, plan, steps_per_epoch, batch_size, targets, anchor
    )


def train(
    config: RunConfig, resume: str = "auto", verbose: int | None = None, callbacks: list | None = None
) -> RunResult:
    trackers = start_trackers(config) if is_chief() else Trackers([])  # a tracker that fails stops us here
    ok = False
    try:
        prepared = prepare(config, resume)
        trackers.start_run(config, prepared.run.path)
        result = fit_and_evaluate(prepared, verbose=verbose, callbacks=callbacks, trackers=trackers)
        ok = True
        return result
    finally:
        trackers.finish(ok)


def fit_and_evaluate(
    p: Prepared, verbose: int | None = None, callbacks: list | None = None, trackers: Trackers | None = None
) -> RunResult:
    """Fit (resuming from the run's checkpoint if there is one), then save and evaluate. `callbacks` run last.

    The steps: restore the checkpoint -> fit -> stop if the loss diverged -> restore the best weights -> save,
    evaluate, export (chief only)."""
    state = TrainingState(p.run / "history.json")
    checkpoint, epochs_done, steps_done = _restore_checkpoint(p, state)
    print(p.plan.summary(p.model), flush=True)
    monitors = Monitors.build(
        p.config.training,
        state,
        p.plan,
        p.run.checkpoints / "best.weights.h5",
        p.run.logs,
        has_validation=p.splits.validation is not None,
        write=is_chief(),
    )
    cache_fills = CacheFills()
    train_ds, class_weight, validation = _datasets(p, cache_fills)  # one validation set for fit and StepLogger's
    fit_callbacks = _callbacks(p, checkpoint, monitors, trackers, list(callbacks or []), validation)
    fit_kwargs = dict(
        validation_data=validation,
        validation_steps=p.config.training.validation_steps,
        class_weight=class_weight,
        callbacks=fit_callbacks,
        verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
    )
    train_seconds = _fit(p, train_ds, cache_fills, fit_kwargs, epochs_done, steps_done, monitors.early_stopping)
    _stop_if_diverged(p, state)
    _restore_best_weights(p, monitors)
    metrics = _save_evaluate_export(p, state, monitors, train_seconds, trackers) if is_chief() else {}
    if p.run.scratch:  # a non-chief worker's files only mattered while training
        shutil.rmtree(p.run.path, ignore_errors=True)
    return RunResult(p.run.path, metrics, state.epochs)


def _restore_checkpoint(p: Prepared, state: TrainingState) -> tuple[ResumableCheckpoint, int, int]:
    """The run's resumable checkpoint, restored if there is one; (checkpoint, epochs done, steps done)."""
    run = p.run
    # Every worker of a multi-worker cluster saves (saving may take part in collectives): non-chief workers into
    # their scratch folder. All restore from the chief's checkpoint so that they resume in the same state.
    checkpoint = ResumableCheckpoint(
        run.checkpoints / "last", p.config.training.checkpoint_every_steps, restore_from=run.restore_checkpoints
    )
    checkpoint.attach(p.model)
    restored = checkpoint.restore()
    epochs_done, steps_done = restored if restored else (0, 0)
    state.truncate(epochs_done)
    if restored:
        print(f"Resuming {run.path}: {epochs_done} epoch(s) and {steps_done} step(s) done.", flush=True)
    return checkpoint, epochs_done, steps_done


def _callbacks(
    p: Prepared,
    checkpoint: ResumableCheckpoint,
    monitors: Monitors,
    trackers: Trackers | None,
    extra: list,
    validation,
) -> list:
    config, run = p.config, p.run
    return [
        FreezingCallback(p.plan),
        *([p.anchor.callback()] if p.anchor else []),  # before the monitors, which record the logs
        *monitors.callbacks(),
        checkpoint,
        keras.callbacks.CSVLogger(str(run / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run.logs), update_freq="epoch", write_graph=False),
        *monitoring_callbacks(
            config.logging,
            p.model,
            p.plan,
            p.strategy,
            run,
            p.steps_per_epoch,
            config.training.epochs,
            p.batch_size,
            validation,
            config.training.validation_steps,
            sinks=[trackers] if trackers else (),
            write=is_chief(),
        ),
        *extra,
    ]


def _datasets(p: Prepared, cache_fills: CacheFills) -> tuple:
    """(training stream, class weights for fit, validation set or None); with several replicas the class weights
    ride in the stream as sample weights and whole global batches are kept."""
    train_ds = p.modality.dataset(
        p.splits.train, p.targets["train"], training=True, batch_size=p.batch_size, cache_fills=cache_fills
    )
    validation = None
    if p.splits.validation is not None:
        validation = validation_batches(
            p.modality, p.splits.validation, p.targets["validation"], p.batch_size, p.config.training.validation_steps
        )  # aggregated metrics only: any order
    class_weight = class_weight_map(p.config, p.targets["train"], p.splits.classes.names)
    replicas = p.strategy.num_replicas_in_sync
    if replicas > 1:
        train_ds = drop_batches_smaller_than(train_ds, replicas)
        if class_weight:
            train_ds, class_weight = with_class_weights(train_ds, class_weight), None
    return train_ds, class_weight, validation


def _fit(
    p: Prepared,
    train_ds,
    cache_fills: CacheFills,
    fit_kwargs: dict,
    epochs_done: int,
    steps_done: int,
    early_stopping: EarlyStopping,
) -> float:
    """Train the epochs left (finishing an epoch a mid-epoch checkpoint interrupted first); the seconds it took."""
    model, replicas = p.model, p.strategy.num_replicas_in_sync

    def stream_from(step: int):
        # Resume skips the global batches already trained on, then splits the rest across the replicas.
        return distribute_global_batches(p.strategy, train_ds.skip(step)) if replicas > 1 else train_ds.skip(step)

    spe, epochs = p.steps_per_epoch, p.config.training.epochs
    if epochs_done >= epochs or early_stopping.should_stop():
        return 0.0  # a finished run, resumed: nothing to train, and no cache to fill
    started = time.time()
    # The cache fills while step 1 is traced (Python on one core), then serves its first batch from memory. The
    # stream is deterministic: resuming skips the steps taken (a mid-epoch checkpoint finishes its epoch first).
    with cache_fills.filling():
        in_epoch = steps_done - epochs_done * spe
        if 0 < in_epoch < spe:
            model.fit(
                stream_from(steps_done),
                initial_epoch=epochs_done,
                epochs=epochs_done + 1,
                steps_per_epoch=spe - in_epoch,
                **fit_kwargs,
            )
            epochs_done += 1
        if epochs_done < epochs and not model.stop_training:
            model.fit(
                stream_from(epochs_done * spe),
                initial_epoch=epochs_done,
                epochs=epochs,
                steps_per_epoch=spe,
                **fit_kwargs,
            )
    return time.time() - started


def _stop_if_diverged(p: Prepared, state: TrainingState) -> None:
    if not state.diverged:
        return
    best_file = p.run.checkpoints / "best.weights.h5"
    if best_file.exists():
        _load_best_weights(p.model, best_file)
    p.run.set_status("stopped_nan")
    raise TrainingAborted(
        f"Training stopped: the loss became NaN/Inf. The best checkpoint is kept at {best_file}. Lower "
        f"optimizer.learning_rate, enable gradient clipping (optimizer.clip.mode: global_norm), or check the "
        f"data for extreme values, then run again (a new run, or --resume {p.run.path})."
    )


def _load_best_weights(model, best_file: Path) -> None:
    with optimizer_state_skipped_quietly():  # training is over: only the model's weights matter here
        model.load_weights(str(best_file))


def _restore_best_weights(p: Prepared, monitors: Monitors) -> None:
    best_file = p.run.checkpoints / "best.weights.h5"
    if not (p.config.training.early_stopping.restore_best and best_file.exists()):
        return
    _load_best_weights(p.model, best_file)
    best_index, _ = monitors.metric.best(monitors.history.state)
    print(
        f"Restored the best weights (epoch {best_index + 1 if best_index is not None else '?'}, "
        f"{monitors.metric.name}).",
        flush=True,
    )


def _save_evaluate_export(
    p: Prepared, state: TrainingState, monitors: Monitors, train_seconds: float, trackers: Trackers | None
) -> dict:
    """Chief only: model.keras and the backbone's weights, the evaluation and report, the SavedModel export."""
    config, run = p.config, p.run
    p.model.save(str(run / "model.keras"))
    p.backbone.save_weights(str(run / "backbone.weights.h5"))
    evaluated = p
    if is_multi_worker():
        # Under MultiWorkerMirroredStrategy, predict() shards its input over the workers and would hand the
        # chief half of the predictions: evaluate a local copy of the final model instead.
        local = load_model_file(run / "model.keras")
        p.modality.adopt_loaded_model(local)
        evaluated = dataclasses.replace(p, model=local)
    metrics = evaluate_run(evaluated, state.epochs, monitors.overfitting.warnings, train_seconds)
    run.set_status("completed", train_seconds=round(train_seconds, 1))
    if config.export.enabled:
        from tfsft.export import export_run

        target = export_run(run.path, config.export.base_path, config.export.name)
        run.set_status("completed", exported=str(target))
        print(f"Exported {target}", flush=True)
    if trackers:
        trackers.finish_run(run.path, metrics, run.status().get("exported") and Path(run.status()["exported"]))
    return metrics
