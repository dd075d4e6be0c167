"""The two extension points' contracts: a `Modality` is complete or cannot be built; a `TaskType`'s exported
scores are the scores evaluation computed (one activation formula, run by numpy and in the TF graph)."""

from pathlib import Path

import numpy as np
import pytest

from conftest import image_config, text_config, validated


def test_a_modality_missing_a_contract_method_cannot_be_built(tmp_path, text_data):
    from tfsft.modalities.base import Modality

    config = validated(text_config(text_data, tmp_path))
    everything_but_onnx = {
        name: (lambda *args: None) for name in Modality.__abstractmethods__ if name != "onnx_preprocessing"
    }
    partial = type("PartialModality", (Modality,), everything_but_onnx)
    with pytest.raises(TypeError, match="onnx_preprocessing"):
        partial(config)
    complete = type("CompleteModality", (Modality,), {**everything_but_onnx, "onnx_preprocessing": lambda *a: {}})
    assert complete(config).config is config


def test_registered_modalities_read_their_sources_with_the_shared_label_parsing(tmp_path, digit_data):
    """Both readers drop a row without a label as a bad record, with the same reason, and keep the rest."""
    from tfsft.data import BadRecords
    from tfsft.modalities import get_modality
    from tfsft.modalities.base import Modality

    paths = sorted(str(p) for p in Path(digit_data["train"]).rglob("*.png"))[:3]
    (tmp_path / "images.csv").write_text(f"path,label\n{paths[0]},digit_0\n{paths[1]},\n{paths[2]},digit_1\n")
    (tmp_path / "texts.csv").write_text("text,label\ngood day,positive\nno label here,\nbad day,negative\n")
    readers = {
        "image": validated(image_config({**digit_data, "train": str(tmp_path / "images.csv")}, tmp_path)),
        "text": validated(
            text_config({"train": str(tmp_path / "texts.csv"), "validation": None, "test": None}, tmp_path)
        ),
    }
    for name, config in readers.items():
        modality = get_modality(config)
        assert isinstance(modality, Modality)
        bad = BadRecords()
        source = str(tmp_path / ("images.csv" if name == "image" else "texts.csv"))
        records = modality.read(source, bad)
        assert len(records) == 2 and records.rows == [2, 4], name  # file lines: the header is line 1
        assert [(item.row, item.reason) for item in bad.items] == [(3, "missing or invalid label in column 'label'")]


@pytest.mark.parametrize("name", ["classification", "multilabel", "regression"])
def test_exported_scores_are_the_scores_evaluation_reports(name):
    import tensorflow as tf
    from scipy.special import expit, softmax

    from tfsft.task_types import task_type

    task = task_type(name)
    logits = (np.random.default_rng(0).normal(size=(6, 3)) * 6).astype(np.float32)
    if name == "regression":
        logits = logits[:, :1]
    reference = {
        "classification": softmax(logits.astype(np.float64), axis=-1),
        "multilabel": expit(logits.astype(np.float64)),
        "regression": logits,
    }[name]
    evaluated = task.activation(logits)
    np.testing.assert_allclose(evaluated, reference, rtol=1e-12, atol=1e-12)
    outputs = task.serving_outputs(tf.constant(logits), ["a", "b", "c"], 0.5, "|", 5)
    exported = outputs[task.score_output].numpy().reshape(evaluated.shape)
    np.testing.assert_allclose(exported, evaluated, atol=1e-6)
