"""One module per modality, each a `Modality` (base.py). Nothing outside this package branches on "image vs text".

A modality object knows how to read its sources into records, turn records into a `tf.data` pipeline of
`(model_inputs, targets)`, build the model's inputs and pooled features on top of a backbone, what an exported
model takes from a client, and describe an example for error analysis. `MODALITIES` registers each one with
what is known of it before TensorFlow loads (preflight and argument checks run without TensorFlow);
`predict_inputs` (TF-free) reads the raw inputs `python -m tfsft.predict` sends to an exported model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tfsft.config import RunConfig

if TYPE_CHECKING:
    from tfsft.modalities.base import Modality


@dataclass(frozen=True)
class ModalitySpec:
    """A registered modality: where its class lives, and how its data sources look."""

    module: str  # imported on demand: each modality pulls in TensorFlow
    class_name: str
    accepts_folders: bool  # whether a data source (data.train, evaluate --data) may be a folder
    source_description: str  # what a data source is, for error messages
    reads_vocabulary: bool = False  # whether text.vocabulary names a file this modality reads


MODALITIES: dict[str, ModalitySpec] = {
    "text": ModalitySpec(
        "tfsft.modalities.text",
        "TextModality",
        accepts_folders=False,
        source_description="a CSV/TSV/JSONL file",
        reads_vocabulary=True,
    ),
    "image": ModalitySpec(
        "tfsft.modalities.image",
        "ImageModality",
        accepts_folders=True,
        source_description="a folder of class folders or a CSV/TSV/JSONL file of image paths",
    ),
}


def modality_spec(config: RunConfig) -> ModalitySpec:
    """The registered `config.task.modality` (config validation has checked the name)."""
    return MODALITIES[config.task.modality]


def get_modality(config: RunConfig) -> Modality:
    """The modality `config.task.modality` names, built from `config`."""
    spec = modality_spec(config)
    modality_class = getattr(importlib.import_module(spec.module), spec.class_name)
    modality: Modality = modality_class(config)
    return modality
