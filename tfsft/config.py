"""The run's schema: every option, its default and its bounds, in one place (the sections by area in
tfsft/config_schema/, assembled here into `RunConfig`; import them all from here).

YAML files are merged in order over the defaults, then `--set a.b=c` overrides; the result is
validated by pydantic. Unknown keys and bad values fail here, before any TensorFlow work, with a
message naming the key, the value received and the nearest valid key.

This module must not import TensorFlow or Keras.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from tfsft.config_schema.base import Section
from tfsft.config_schema.inputs import (
    AugmentConfig,
    BackboneConfig,
    DataConfig,
    HeadConfig,
    ImageConfig,
    ModelConfig,
    SplitConfig,
    TaskConfig,
    TextConfig,
)
from tfsft.config_schema.outputs import (
    EvaluationConfig,
    ExportConfig,
    LoggingConfig,
    MlflowConfig,
    ProgressConfig,
    TrackingConfig,
    WandbConfig,
)
from tfsft.config_schema.training import (
    ClipConfig,
    DistributeConfig,
    EarlyStoppingConfig,
    EmaConfig,
    FreezeConfig,
    FreezeStage,
    OptimizerConfig,
    PretrainedAnchorConfig,
    RegularizationConfig,
    ScheduleConfig,
    TrainingConfig,
)
from tfsft.config_schema.tune import TuneConfig, TuneParameter
from tfsft.errors import ConfigError

__all__ = [
    "Section",
    "TaskConfig",
    "SplitConfig",
    "DataConfig",
    "TextConfig",
    "AugmentConfig",
    "ImageConfig",
    "BackboneConfig",
    "HeadConfig",
    "ModelConfig",
    "FreezeStage",
    "FreezeConfig",
    "ClipConfig",
    "EmaConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "PretrainedAnchorConfig",
    "RegularizationConfig",
    "EarlyStoppingConfig",
    "TrainingConfig",
    "DistributeConfig",
    "EvaluationConfig",
    "ExportConfig",
    "ProgressConfig",
    "LoggingConfig",
    "WandbConfig",
    "MlflowConfig",
    "TrackingConfig",
    "TuneParameter",
    "TuneConfig",
    "RunConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
    "parse_override",
    "read_yaml",
    "tunable_field_problem",
    "validate",
]


# ----------------------------------------------------------------------------------------- the run
class RunConfig(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = "runs"
    seed: int = Field(42, ge=0, le=2**32 - 1 - 2, description="Random seed (NumPy/Keras need 0..2**32-1).")
    task: TaskConfig = TaskConfig()
    data: DataConfig
    text: TextConfig = TextConfig()
    image: ImageConfig = ImageConfig()
    model: ModelConfig
    freeze: FreezeConfig = FreezeConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    regularization: RegularizationConfig = RegularizationConfig()
    training: TrainingConfig = TrainingConfig()
    distribute: DistributeConfig = DistributeConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    export: ExportConfig = ExportConfig()
    logging: LoggingConfig = LoggingConfig()
    tracking: TrackingConfig = TrackingConfig()
    tune: TuneConfig | None = Field(None, description="Search space and tuner of `python -m tfsft.tune`.")

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.task.type == "regression" and (self.image.augment.mixup_alpha or self.image.augment.cutmix_alpha):
            raise ValueError("MixUp/CutMix mix class labels: they need task.type classification or multilabel")
        if self.evaluation.calibrate != "none":
            if self.task.type == "regression":
                raise ValueError("evaluation.calibrate scales class probabilities; regression has none: set it to none")
            if self.data.validation is None and self.data.split.validation == 0:
                raise ValueError(
                    "evaluation.calibrate fits on the validation split: give data.validation or a "
                    "data.split.validation > 0"
                )
        if self.data.format == "image_folder" and self.task.modality != "image":
            raise ValueError("data.format image_folder needs task.modality: image")
        if self.tune is not None:
            for name, parameter in self.tune.space.items():
                for field_name in (name, *parameter.when):
                    problem = tunable_field_problem(field_name)
                    if problem:
                        raise ValueError(f"tune.space: {problem}")
        from tfsft.config_checks import reference_problems  # metric names and stages the run will really have

        problems = reference_problems(self)
        if problems:
            raise ValueError(" ".join(problems))
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------------------- loading
def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config '{path}' is a folder; pass a YAML file (e.g. {path}/config.yaml).")
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist. Pass an existing YAML file to --config.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read config file '{path}': {exc.strerror}. Check its permissions.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {exc}. Fix the syntax and run again.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of sections, got {type(data).__name__}.")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as a YAML scalar/list)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. optimizer.learning_rate=3e-5), got '{item}'.")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in '{item}'. Use dotted names such as training.epochs=5.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 3e-5 as a string (no dot): accept it as the float it obviously is.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in "e.") and value[0] in "0123456789.-+" else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _model_at(path: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class found by walking `path` (field names) from `root`."""
    model = root
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        for candidate in candidates:
            for sub in (candidate, *getattr(candidate, "__args__", ())):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    model = sub
                    break
            else:
                continue
            break
        else:
            return None
    return model


def tunable_field_problem(dotted: str) -> str | None:
    """Why `dotted` cannot be searched (None if it can): it must name an existing, non-section config field."""
    parts = dotted.split(".")
    if parts[0] == "tune":
        return f"'{dotted}' belongs to the tune section itself, which cannot be searched."
    parent = _model_at(tuple(parts[:-1]), RunConfig) if len(parts) > 1 else RunConfig
    fields = parent.model_fields if parent is not None else {}
    if parts[-1] not in fields:
        valid = sorted(fields) if parent is not None else sorted(RunConfig.model_fields)
        prefix = ".".join(parts[:-1]) if parent is not None else ""
        guess = difflib.get_close_matches(parts[-1] if parent is not None else parts[0], valid, n=1, cutoff=0.5)
        hint = f" Did you mean '{prefix + '.' if prefix else ''}{guess[0]}'?" if guess else ""
        return f"'{dotted}' is not a config field.{hint}"
    sub = _model_at(tuple(parts), RunConfig)
    if sub is not None and sub is not parent:
        return (
            f"'{dotted}' is a whole section; search one of its fields, e.g. '{dotted}.{next(iter(sub.model_fields))}'."
        )
    return None


# Keys earlier versions accepted: what replaced them, for the error a config written for those versions meets.
RETIRED_KEYS = {
    "text.bucket_boundaries": "training batches are now grouped by length in windows of each epoch's shuffled "
    "examples, without boundaries (`text.length_grouping`: batches per window, 50; 1 = plain shuffled batches). "
    "Delete the key.",
}


def _describe(error: ErrorDetails) -> str:
    loc = tuple(error["loc"])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    received = error.get("input")
    if kind == "extra_forbidden":
        if dotted in RETIRED_KEYS:
            return f"'{dotted}' is no longer a config key: {RETIRED_KEYS[dotted]}"
        parent = _model_at(loc[:-1], RunConfig)
        valid = sorted(parent.model_fields) if parent else []
        guess = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        prefix = ".".join(str(p) for p in loc[:-1])
        hint = f" Did you mean '{prefix + '.' if prefix else ''}{guess[0]}'?" if guess else ""
        return f"unknown key '{dotted}'.{hint} Valid keys here: {', '.join(valid)}."
    if kind == "missing":
        return f"'{dotted}' is required but missing."
    if not loc:  # a check across sections: its message names the keys itself
        return str(error["msg"]).removeprefix("Value error, ").rstrip(".") + "."
    shown = repr(received)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"'{dotted}' = {shown}: {error['msg']}."


def validate(raw: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise ConfigError(
            "Invalid configuration: " + " ".join(problems) + " Fix the YAML file or the --set value and run again."
        ) from None


def load_config(paths: list[str | Path] | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict = {}
    for path in paths or []:
        raw = _deep_merge(raw, read_yaml(path))
    raw = apply_overrides(raw, overrides or [])
    return validate(raw)


def dump_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
