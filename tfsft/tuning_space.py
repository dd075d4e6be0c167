"""The search space of `tune.space` on Keras Tuner: declaring it (conditional scopes, mixed-type choices), a trial's
values as config overrides, and the check that every bound and choice is a valid value before the first trial.

Used by tfsft.tuning (the search) and tfsft.tuning_results (the best config); no TensorFlow import.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from tfsft.config import RunConfig, TuneConfig, TuneParameter, apply_overrides, validate
from tfsft.errors import ConfigError


# ----------------------------------------------------------------------------------------- the space
def search_settings(base: RunConfig) -> TuneConfig:
    """`base.tune`, which every step of a search needs."""
    if base.tune is None:
        raise ConfigError(
            "The config has no `tune:` section. Add one (see configs/tune_quickstart.yaml) with "
            "`space:` listing the dotted fields to search, or pass it with a second --config."
        )
    return base.tune


def choices(parameter: TuneParameter) -> list:
    """A choice parameter's values (the schema refuses a choice without them)."""
    if parameter.values is None:
        raise ValueError(f"a {parameter.type} parameter has no values")
    return parameter.values


def bounds(parameter: TuneParameter) -> tuple[float, float]:
    """An int or float parameter's min and max (the schema refuses a range without both)."""
    if parameter.min is None or parameter.max is None:
        raise ValueError(f"a {parameter.type} parameter has no min/max")
    return parameter.min, parameter.max


def ordered_space(tune: TuneConfig) -> list[tuple[str, TuneParameter]]:
    """Parameters ordered so that every `when` parent comes before its children (Keras Tuner needs that)."""
    remaining, ordered, placed = dict(tune.space), [], set()
    for name, parameter in tune.space.items():
        missing = [parent for parent in parameter.when if parent not in tune.space]
        if missing:
            raise ConfigError(
                f"tune.space.{name}.when names {missing}, which are not searched. A condition must be on another "
                f"searched field (add it to tune.space), or drop the condition and set the value in the config."
            )
    while remaining:
        ready = [n for n, p in remaining.items() if all(parent in placed for parent in p.when)]
        if not ready:
            raise ConfigError(f"tune.space: the `when` conditions of {sorted(remaining)} form a cycle.")
        for name in ready:
            ordered.append((name, remaining.pop(name)))
            placed.add(name)
    return ordered


def _encode_choices(values: list) -> tuple[list, dict]:
    """Keras Tuner needs choices of one type; mixed ones (e.g. [2, "all"]) travel as their YAML text."""
    if len({type(v) for v in values}) == 1:
        return list(values), {}
    encoded = [yaml.safe_dump(v).strip().removesuffix("...").strip() for v in values]
    return encoded, dict(zip(encoded, values))


def declare(hp, tune: TuneConfig) -> dict[str, dict]:
    """Declare the space on a Keras Tuner `HyperParameters`; returns the decoding maps of mixed choices."""
    decoders: dict[str, dict] = {}
    grid = tune.tuner == "grid"
    for name, parameter in ordered_space(tune):
        scopes = [
            hp.conditional_scope(parent, _condition_values(tune.space[parent], values))
            for parent, values in parameter.when.items()
        ]
        for scope in scopes:
            scope.__enter__()
        try:
            if parameter.type == "choice":
                values, decoders[name] = _encode_choices(choices(parameter))
                hp.Choice(name, values, ordered=False)
            elif parameter.type == "int":
                hp.Int(
                    name,
                    int(bounds(parameter)[0]),
                    int(bounds(parameter)[1]),
                    step=int(parameter.step or 1),
                    sampling=parameter.sampling,
                )
            else:
                if grid and parameter.step is None:
                    raise ConfigError(
                        f"tune.tuner is grid but tune.space.{name} is a float range without `step`: "
                        f"give it a step (or use type: choice) so the grid is finite."
                    )
                hp.Float(name, *bounds(parameter), step=parameter.step, sampling=parameter.sampling)
        finally:
            for scope in reversed(scopes):
                scope.__exit__(None, None, None)
    return decoders


def _condition_values(parent: TuneParameter, values: list) -> list:
    """`when` values as the parent hyperparameter holds them (mixed-type choices travel encoded)."""
    if parent.type != "choice":
        return list(values)
    encoded, decoder = _encode_choices(choices(parent))
    if not decoder:
        return list(values)
    back = {json.dumps(original): code for code, original in decoder.items()}
    return [back.get(json.dumps(v), v) for v in values]


def trial_overrides(values: dict, tune: TuneConfig, decoders: dict[str, dict]) -> dict[str, Any]:
    """Dotted field -> value for the trial's active parameters (inactive conditionals are left out)."""
    out = {}
    for name in tune.space:
        if name in values:
            value = values[name]
            out[name] = decoders.get(name, {}).get(value, value)
    return out


def config_for_trial(base: RunConfig, overrides: dict[str, Any], **fields) -> RunConfig:
    """The base config with the trial's values; fields such as name/output_dir set as well. Raises ConfigError."""
    raw = base.to_dict()
    raw.pop("tune", None)
    raw = apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in {**overrides, **fields}.items()])
    return validate(raw)


def check_space_values(base: RunConfig) -> None:
    """Every bound and choice must itself be a valid value of its field: fail before the first trial."""
    tune = search_settings(base)
    ordered_space(tune)  # conditions on searched fields, no cycles
    for name, parameter in tune.space.items():
        probes = choices(parameter) if parameter.type == "choice" else list(bounds(parameter))
        for value in probes:
            if parameter.type == "int":
                value = int(value)
            try:
                config_for_trial(base, {name: value})
            except ConfigError as exc:
                raise ConfigError(
                    f"tune.space.{name}: the value {value!r} is not valid for that field. {exc}"
                ) from None
