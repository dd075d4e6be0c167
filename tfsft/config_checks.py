"""Checks of what a config *refers to* against what the run will really have, before any work starts.

A metric name in `training.early_stopping.monitor` or `tune.objective` that the run never logs would silently
disable best checkpoints, early stopping or the search; a `freeze.schedule` stage starting after the last
epoch would silently never unfreeze. Each returns a sentence naming the key, the value and what would work.

This module must not import TensorFlow or Keras (it runs inside config validation).
"""

from __future__ import annotations

import difflib

from tfsft.task_types import TASK_TYPES

# The metrics each task type compiles (tests/test_bad_inputs_data.py checks they are the ones Keras logs).
TASK_METRICS = {name: task.metric_names for name, task in TASK_TYPES.items()}


def has_validation(config) -> bool:
    return bool(config.data.validation) or config.data.split.validation > 0


def logged_metrics(config) -> list[str]:
    """The metric names each epoch of this run logs to history.json."""
    names = ["loss", *TASK_METRICS[config.task.type]]
    if has_validation(config):
        names += [f"val_{name}" for name in names]
    return names


def _suggestion(name: str, valid: list[str]) -> str:
    token = name.rsplit("_", 1)[-1]
    containing = [v for v in valid if token and token in v and v.startswith("val_") == name.startswith("val_")]
    guess = containing[:1] or difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" Did you mean '{guess[0]}'?" if guess else ""


def monitor_problem(config) -> str | None:
    monitor = config.training.early_stopping.monitor
    valid = logged_metrics(config)
    # Without a validation split the monitor falls back from val_x to x (tfsft.callbacks.MonitoredMetric).
    effective = monitor if has_validation(config) or not monitor.startswith("val_") else monitor[len("val_") :]
    if effective in valid:
        return None
    return (
        f"training.early_stopping.monitor = '{monitor}' is not a metric this run logs, so best checkpoints and "
        f"early stopping would never trigger.{_suggestion(monitor, valid)} This run logs: {', '.join(valid)}."
    )


def objective_problem(config) -> str | None:
    if config.tune is None:
        return None
    objective = config.tune.objective
    valid = logged_metrics(config)
    if objective in valid:
        return None
    needs_validation = objective.startswith("val_") and not has_validation(config)
    why = (
        " It needs a validation split (data.validation or data.split.validation > 0)."
        if needs_validation
        else _suggestion(objective, valid)
    )
    return f"tune.objective = '{objective}' is not a metric the trials log.{why} They log: {', '.join(valid)}."


def freeze_problem(config) -> str | None:
    from tfsft.freeze_stages import stages_for

    epochs = config.training.epochs
    late = [start for start, _ in stages_for(config.freeze) if start >= epochs]
    if not late:
        return None
    return (
        f"freeze.schedule has stage(s) starting at epoch(s) {late}, but training.epochs = {epochs} runs epochs "
        f"0..{epochs - 1} (stages count epochs from 0): they would never unfreeze anything. Start them before "
        f"epoch {epochs}, or raise training.epochs."
    )


def reference_problems(config) -> list[str]:
    return [p for p in (monitor_problem(config), objective_problem(config), freeze_problem(config)) if p]
