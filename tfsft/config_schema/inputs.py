"""Config sections describing the inputs: the task, the data sources, text and image preprocessing, the model.

Part of the run's schema (tfsft.config, where they are imported from); no TensorFlow or Keras import.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from tfsft.config_schema.base import Section


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
            raise ValueError(f"validation ({self.validation}) + test ({self.test}) must be < 1 to leave training data")
        return self


class DataConfig(Section):
    train: str = Field(..., description="Training source: CSV/TSV/JSONL file or (images) a folder of class folders.")
    validation: str | None = None
    test: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl", "image_folder"] = "auto"
    quoting: Literal["auto", "double_quote", "none"] = Field(
        "auto", description="Quote rules of CSV/TSV files. auto: double_quote for CSV, none for TSV."
    )
    encoding: str = "utf-8"
    split: SplitConfig = SplitConfig()
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    path_column: str = "path"
    label_separator: str = Field("|", min_length=1, description="Separates labels of one multi-label record.")
    classes: list[str] | None = Field(None, description="Explicit class list; default: sorted labels seen in train.")
    max_train_examples: int | None = Field(None, ge=1, description="Keep a stratified subset of the training split.")
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
    length_grouping: int = Field(
        50,
        ge=1,
        description="Training batches of texts of similar length: each epoch's shuffled examples are cut into "
        "windows of this many batches, each sorted by token length, cut into batches and shuffled (whole batches) "
        "within the window; each batch is then padded only to its own longest text (rounded up to 4). Every example "
        "is still seen once per epoch. 1 = plain shuffled batches.",
    )
    vocabulary: str | None = Field(
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
    preset: str | None = Field(
        None,
        description="KerasHub preset name, local folder, hf:// or kaggle:// handle, or package:<python_pkg>/<subdir>.",
    )
    name: str | None = Field(None, description="keras.applications model (ResNet50, ResNet101V2, ...) ")
    architecture: str | None = Field(None, description="KerasHub backbone class built from `kwargs` (tiny models).")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(
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
