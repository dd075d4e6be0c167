"""The run's schema: every option, its default and its bounds, in one place.

YAML files are merged in order over the defaults, then `--set a.b=c` overrides; the result is
validated by pydantic. Unknown keys and bad values fail here, before any TensorFlow work, with a
message naming the key, the value received and the nearest valid key.

This module must not import TensorFlow or Keras.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tfsft.errors import ConfigError
from tfsft.metric_direction import resolve_direction


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------- task
class TaskConfig(Section):
    modality: Literal["text", "image"] = "text"
    type: Literal["classification", "multilabel", "regression"] = "classification"


# ----------------------------------------------------------------------------------------- data
class SplitConfig(Section):
    """Fractions carved out of `data.train` when no explicit validation/test source is given."""

    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _leave_something_to_train(self):
        if self.validation + self.test >= 1.0:
            raise ValueError(
                f"validation ({self.validation}) + test ({self.test}) must be < 1 to leave training data"
            )
        return self


class DataConfig(Section):
    train: str = Field(..., description="Training source: CSV/TSV/JSONL file or (images) a folder of class folders.")
    validation: Optional[str] = None
    test: Optional[str] = None
    format: Literal["auto", "csv", "tsv", "jsonl", "image_folder"] = "auto"
    quoting: Literal["auto", "double_quote", "none"] = Field(
        "auto", description="Quote rules of CSV/TSV files. auto: double_quote for CSV, none for TSV.")
    encoding: str = "utf-8"
    split: SplitConfig = SplitConfig()
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    path_column: str = "path"
    label_separator: str = Field("|", min_length=1, description="Separates labels of one multi-label record.")
    classes: Optional[list[str]] = Field(None, description="Explicit class list; default: sorted labels seen in train.")
    max_train_examples: Optional[int] = Field(None, ge=1, description="Keep a stratified subset of the training split.")
    on_bad_record: Literal["skip", "fail"] = "skip"
    max_bad_fraction: float = Field(0.1, ge=0.0, le=1.0, description="Fail when more records than this are bad.")
    shuffle_buffer: int = Field(10_000, ge=1)
    cache: bool = True

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, classes):
        duplicates = sorted({name for name in classes or [] if (classes or []).count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate class name(s) {duplicates}; list each class once")
        return classes


# ----------------------------------------------------------------------------------------- text / image
class TextConfig(Section):
    max_length: int = Field(128, ge=8, le=4096)
    bucket_boundaries: list[int] = Field(
        [16, 32, 48, 64, 96, 128, 192, 256, 384, 512],
        description="Training batches group examples whose lengths fall between the same two boundaries; every batch "
                    "is then padded only to its own longest sequence (rounded up to 8).",
    )
    vocabulary: Optional[str] = Field(
        None, description="vocab.txt for backbones built from config; 'learn' builds a WordPiece vocabulary from train."
    )
    vocabulary_size: int = Field(2000, ge=100, description="Size of a learned vocabulary.")
    lowercase: bool = True


class AugmentConfig(Section):
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "horizontal"
    rotation: float = Field(0.0, ge=0.0, le=0.5, description="Max rotation as a fraction of a full turn.")
    zoom: float = Field(0.0, ge=0.0, lt=1.0)
    crop_padding: int = Field(0, ge=0, description="Pad then randomly crop back to size (pixels).")
    rand_augment: bool = False
    rand_augment_magnitude: float = Field(0.5, ge=0.0, le=1.0)
    mixup_alpha: float = Field(0.0, ge=0.0, description="0 disables MixUp.")
    cutmix_alpha: float = Field(0.0, ge=0.0, description="0 disables CutMix.")


class ImageConfig(Section):
    # Height, width in pixels. Below 8 no backbone has anything to convolve.
    size: tuple[Annotated[int, Field(ge=8, le=8192)], Annotated[int, Field(ge=8, le=8192)]] = (224, 224)
    channels: Literal[1, 3] = 3
    normalization: Literal["auto", "caffe", "torch", "tf", "unit", "none"] = Field(
        "auto", description="Pixel normalization inside the model; auto = what the backbone was trained with."
    )
    augment: AugmentConfig = AugmentConfig()
    verify: bool = Field(True, description="Decode every image once before training to find corrupt files.")


# ----------------------------------------------------------------------------------------- model
class BackboneConfig(Section):
    source: Literal["keras_hub", "keras_applications"] = "keras_hub"
    preset: Optional[str] = Field(
        None,
        description="KerasHub preset name, local folder, hf:// or kaggle:// handle, or package:<python_pkg>/<subdir>.",
    )
    name: Optional[str] = Field(None, description="keras.applications model (ResNet50, ResNet101V2, ...) ")
    architecture: Optional[str] = Field(None, description="KerasHub backbone class built from `kwargs` (tiny models).")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Optional[str] = Field(
        None, description="keras.applications: imagenet | none | path; otherwise a .weights.h5 file to load."
    )

    @model_validator(mode="after")
    def _one_way_to_build(self):
        ways = [w for w in ("preset", "name", "architecture") if getattr(self, w)]
        if len(ways) != 1:
            raise ValueError(
                "set exactly one of model.backbone.preset (KerasHub preset or folder), model.backbone.name "
                f"(keras.applications) or model.backbone.architecture (built from kwargs); got {ways or 'none'}"
            )
        if self.name and self.source != "keras_applications":
            raise ValueError("model.backbone.name is for source: keras_applications")
        if self.source == "keras_applications" and not self.name:
            raise ValueError("source: keras_applications needs model.backbone.name (e.g. ResNet50)")
        return self


class HeadConfig(Section):
    pooling: Literal["auto", "avg", "max", "cls", "mean", "pooled"] = Field(
        "auto", description="auto: avg for images, mean over tokens for text."
    )
    hidden_units: list[int] = Field(default_factory=list)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class ModelConfig(Section):
    backbone: BackboneConfig
    head: HeadConfig = HeadConfig()


# ----------------------------------------------------------------------------------------- freezing
class FreezeStage(Section):
    epoch: int = Field(..., ge=0, description="First epoch (0-based) of this stage.")
    trainable_units: Union[int, Literal["all"]] = Field(..., description="Backbone units trained, counted from the top.")
    lr_factor: float = Field(1.0, gt=0.0, description="Multiplies the scheduled learning rate during this stage.")

    @model_validator(mode="after")
    def _non_negative(self):
        if isinstance(self.trainable_units, int) and self.trainable_units < 0:
            raise ValueError(f"trainable_units must be >= 0 or 'all', got {self.trainable_units}")
        return self


class FreezeConfig(Section):
    strategy: Literal["none", "backbone", "last_n", "gradual"] = "none"
    last_n: int = Field(2, ge=0, description="last_n: backbone units (blocks / transformer layers) left trainable.")
    granularity: Literal["block", "stage"] = Field("block", description="Unit of last_n for CNNs: residual block or stage.")
    schedule: list[FreezeStage] = Field(
        default_factory=lambda: [
            FreezeStage(epoch=0, trainable_units=0),
            FreezeStage(epoch=1, trainable_units=2),
            FreezeStage(epoch=2, trainable_units="all", lr_factor=0.5),
        ]
    )
    backbone_lr_factor: float = Field(1.0, gt=0.0, le=10.0, description="Backbone LR = head LR x this factor.")
    layerwise_lr_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="Layer-wise LR decay: a backbone unit's LR = head LR x backbone_lr_factor x "
                                         "this^(depth from the top: 1 for the top unit, units+1... for the stem).")
    train_batchnorm: Union[bool, Literal["auto"]] = Field(
        "auto", description="Unfrozen BatchNorm layers learn and update their statistics. auto: only for a backbone "
                            "without pretrained weights; pretrained BatchNorm stays in inference mode."
    )

    @model_validator(mode="after")
    def _schedule_ordered(self):
        epochs = [s.epoch for s in self.schedule]
        if self.strategy == "gradual":
            if not epochs or epochs[0] != 0:
                raise ValueError("freeze.schedule must start with a stage at epoch 0")
            if epochs != sorted(set(epochs)):
                raise ValueError(f"freeze.schedule epochs must be strictly increasing, got {epochs}")
        return self


# ----------------------------------------------------------------------------------------- optimization
class ClipConfig(Section):
    mode: Literal["none", "global_norm", "norm", "value"] = "global_norm"
    value: float = Field(1.0, gt=0.0)


class EmaConfig(Section):
    enabled: bool = False
    momentum: float = Field(0.999, gt=0.0, lt=1.0)


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    learning_rate: float = Field(5e-5, gt=0.0, le=10.0)
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    beta_1: float = Field(0.9, ge=0.0, lt=1.0)
    beta_2: float = Field(0.999, ge=0.0, lt=1.0)
    epsilon: float = Field(1e-7, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    clip: ClipConfig = ClipConfig()
    gradient_accumulation_steps: int = Field(1, ge=1)
    ema: EmaConfig = EmaConfig()


class ScheduleConfig(Section):
    name: Literal["constant", "exponential", "cosine", "linear"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Warmup as a fraction of all steps (if steps=0).")
    decay_rate: float = Field(0.5, gt=0.0, le=1.0, description="exponential: factor per decay_steps.")
    decay_steps: Optional[int] = Field(None, ge=1, description="exponential: default one epoch.")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Floor of cosine/linear/exponential decay.")


# ----------------------------------------------------------------------------------------- regularization
class PretrainedAnchorConfig(Section):
    """Keep the fine-tuned backbone near the pretrained one (tfsft/regularization.py)."""

    kind: Literal["none", "l2sp", "features"] = Field(
        "none", description="l2sp: alpha/2 ||w - w0||^2 over the backbone; features: alpha/2 * mean ||f - f0||^2 "
                            "between pooled features of the backbone and a frozen pretrained copy (2nd forward pass).")
    alpha: float = Field(0.01, ge=0.0, le=1e6, description="Weight of the pretrained anchor.")
    beta: float = Field(0.0, ge=0.0, le=1e6,
                        description="beta/2 ||w||^2 over the new head (replaces its weight decay).")


class RegularizationConfig(Section):
    pretrained_anchor: PretrainedAnchorConfig = PretrainedAnchorConfig()


# ----------------------------------------------------------------------------------------- training loop
class EarlyStoppingConfig(Section):
    enabled: bool = True
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0.0)
    restore_best: bool = True


class TrainingConfig(Section):
    epochs: int = Field(3, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, description="Global batch size: one optimizer step sees this many examples, "
                                                  "split evenly across the replicas.")
    per_replica_batch_size: Optional[int] = Field(
        None, ge=1, description="Set instead of batch_size to fix the batch per device: the global batch becomes "
                                "this x the number of replicas (all GPUs of all workers).")
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="Cap the steps of each epoch (quick runs).")
    validation_steps: Optional[int] = Field(None, ge=1)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Union[Literal["none", "balanced"], dict[str, float]] = "none"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    overfit_patience: int = Field(2, ge=1, description="Warn when val loss rises this many epochs while train falls.")
    checkpoint_every_steps: Optional[int] = Field(
        None, ge=1, description="Also save a resumable checkpoint every N steps (default: each epoch end)."
    )
    jit_compile: Union[bool, Literal["auto"]] = Field(
        "auto", description="XLA compilation of the train step. auto: on for GPU/TPU, off on CPU (measured slower "
                            "there: see scripts/bench_train.py).")
    steps_per_execution: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_batch_size(self):
        if self.per_replica_batch_size is not None and "batch_size" in self.model_fields_set:
            raise ValueError("set either training.batch_size (global) or training.per_replica_batch_size, not both")
        return self

    def global_batch_size(self, replicas: int) -> int:
        if self.per_replica_batch_size is not None:
            return self.per_replica_batch_size * replicas
        return self.batch_size


class DistributeConfig(Section):
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    mixed_precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"


class EvaluationConfig(Section):
    worst_examples: int = Field(50, ge=0, description="Rows in worst_examples.csv.")
    multilabel_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    calibrate: Literal["none", "temperature"] = Field(
        "none", description="temperature: fit a temperature on the validation split after training (one per label "
                            "for multilabel); reported and baked into the exported probabilities.")


class ExportConfig(Section):
    enabled: bool = Field(False, description="Export a TF Serving SavedModel at the end of training.")
    base_path: str = "saved_models"
    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Model name (default: run name).")


# ----------------------------------------------------------------------------------------- monitoring
class ProgressConfig(Section):
    """The progress line printed when stdout is not a terminal (job logs, CI, nohup); a terminal gets Keras's bar."""

    enabled: Union[bool, Literal["auto"]] = Field("auto", description="auto: only when stdout is not a TTY.")
    every_steps: Optional[int] = Field(None, ge=1, description="A line every N steps (default: by time only).")
    every_seconds: float = Field(30.0, gt=0.0, description="A line at least every M seconds.")


class LoggingConfig(Section):
    every_steps: Union[int, Literal["auto"]] = Field(
        "auto", description="Per-step scalars every N optimizer steps. auto: 50 points per epoch (every 5 steps of "
                            "the quickstart's 250-step epoch).")
    validate_every_steps: Optional[int] = Field(None, ge=1, description="Also validate every N steps (default: "
                                                                        "at each epoch end only).")
    gradient_norm: bool = Field(True, description="Log the global gradient norm before clipping.")
    progress: ProgressConfig = ProgressConfig()

    @model_validator(mode="after")
    def _positive(self):
        if isinstance(self.every_steps, int) and self.every_steps < 1:
            raise ValueError(f"logging.every_steps must be >= 1 or 'auto', got {self.every_steps}")
        return self

    def interval(self, steps_per_epoch: int) -> int:
        return max(1, steps_per_epoch // 50) if self.every_steps == "auto" else int(self.every_steps)


class WandbConfig(Section):
    project: str = "tfsft"
    entity: Optional[str] = None
    mode: Literal["online", "offline"] = "online"
    tags: list[str] = Field(default_factory=list)
    dir: Optional[str] = Field(None, description="Where W&B writes its files (default: the run directory).")
    group: Optional[str] = Field(None, description="Run group (a tuning search sets it for its trials).")


class MlflowConfig(Section):
    tracking_uri: str = Field("mlruns", description="A server URL, or a local folder (file store).")
    experiment: Optional[str] = Field(None, description="Experiment name (default: the run's name).")
    log_model: bool = Field(True, description="Log the exported SavedModel as an artifact (with export.enabled).")
    parent_run_id: Optional[str] = Field(None, description="Log as a child run of this run (tuning trials).")


class TrackingConfig(Section):
    wandb: Optional[WandbConfig] = None
    mlflow: Optional[MlflowConfig] = None
    required: bool = Field(True, description="A tracker that cannot start fails the run before training; false: "
                                             "a warning, and the run goes on without it.")


# ----------------------------------------------------------------------------------------- tune
class TuneParameter(Section):
    """One searched config field. `when` makes it conditional: only tuned (and applied) while every named
    field holds one of the listed values, e.g. `freeze.last_n` only `when: {freeze.strategy: [last_n]}`."""

    type: Literal["float", "int", "choice"]
    min: Optional[float] = None
    max: Optional[float] = None
    sampling: Literal["linear", "log"] = "linear"
    step: Optional[float] = Field(None, gt=0, description="int: step between values; float: optional grid step.")
    values: Optional[list[Union[bool, int, float, str]]] = Field(None, min_length=1)
    when: dict[str, list[Union[bool, int, float, str]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self):
        if self.type == "choice":
            if not self.values or self.min is not None or self.max is not None:
                raise ValueError("a choice parameter needs `values` (a list) and no min/max")
        else:
            if self.min is None or self.max is None or self.values is not None:
                raise ValueError(f"a {self.type} parameter needs `min` and `max` and no `values`")
            if self.min >= self.max:
                raise ValueError(f"min ({self.min}) must be smaller than max ({self.max})")
            if self.sampling == "log" and self.min <= 0:
                raise ValueError(f"log sampling needs min > 0, got {self.min}")
            if self.type == "int" and (self.min != int(self.min) or self.max != int(self.max)):
                raise ValueError("an int parameter needs whole-number min and max")
        return self


class TuneConfig(Section):
    tuner: Literal["random", "bayesian", "hyperband", "grid"] = "random"
    objective: str = Field("val_loss", description="A validation metric logged in history, e.g. val_macro_f1.")
    direction: Literal["auto", "min", "max"] = Field("auto", description="auto: from the name (metric_direction.py).")
    max_trials: int = Field(10, ge=1, le=100_000)
    executions_per_trial: int = Field(1, ge=1, le=100, description="Trainings per trial (different seeds), averaged.")
    max_epochs: Optional[int] = Field(None, ge=1, description="hyperband: the epoch budget of the longest trial "
                                                              "(default training.epochs).")
    hyperband_factor: int = Field(3, ge=2)
    seed: Optional[int] = Field(None, ge=0, le=2**32 - 1, description="Seed of the search (default: the run's seed).")
    isolate_trials: bool = Field(True, description="Train each trial in a fresh process: the search's memory stays "
                                                   "flat (costs a TensorFlow import per trial).")
    space: dict[str, TuneParameter] = Field(..., min_length=1, description="Dotted config field -> parameter.")

    def objective_direction(self) -> str:
        return resolve_direction(self.objective, self.direction)


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
    tune: Optional[TuneConfig] = Field(None, description="Search space and tuner of `python -m tfsft.tune`.")

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.task.type == "regression" and (self.image.augment.mixup_alpha or self.image.augment.cutmix_alpha):
            raise ValueError("MixUp/CutMix mix class labels: they need task.type classification or multilabel")
        if self.evaluation.calibrate != "none":
            if self.task.type == "regression":
                raise ValueError("evaluation.calibrate scales class probabilities; regression has none: set it to none")
            if self.data.validation is None and self.data.split.validation == 0:
                raise ValueError("evaluation.calibrate fits on the validation split: give data.validation or a "
                                 "data.split.validation > 0")
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


def _model_at(path: tuple, root: type[BaseModel]) -> Optional[type[BaseModel]]:
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


def tunable_field_problem(dotted: str) -> Optional[str]:
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
        return f"'{dotted}' is a whole section; search one of its fields, e.g. '{dotted}.{next(iter(sub.model_fields))}'."
    return None


def _describe(error: dict) -> str:
    loc = tuple(error["loc"])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    received = error.get("input")
    if kind == "extra_forbidden":
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
