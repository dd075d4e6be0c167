"""ONNX export contract: Triton layout, side files that let a client preprocess, onnxruntime parity, versions."""

import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tf2onnx")  # the optional `onnx` extra; CI without it skips this file
onnxruntime = pytest.importorskip("onnxruntime")

from conftest import run_cli, text_config, validated  # noqa: E402
from tfsft import onnx_export  # noqa: E402
from tfsft.errors import TfsftError  # noqa: E402
from tfsft.export import ExportError  # noqa: E402
from tfsft.export import main as export_main  # noqa: E402
from tfsft.onnx_export import export_onnx  # noqa: E402
from tfsft.runs import load_run  # noqa: E402
from tfsft.trainer import train  # noqa: E402

TOLERANCE = 1e-4
SIDE_FILES = ("model.onnx", "classes.json", "preprocessing.json", "config.yaml", "export.json")


def digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_onnx(target: Path, feed: dict) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {arg.name: feed[arg.name] for arg in session.get_inputs()})[0]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_data):
    tmp = tmp_path_factory.mktemp("onnx_text")
    return train(validated(text_config(text_data, tmp, training={"epochs": 1})), verbose=0).run_dir


def test_text_onnx_answers_client_tokenized_inputs_like_keras(tmp_path, text_run, text_data):
    import keras_hub

    from tfsft.data import Records
    from tfsft.modalities import get_modality

    target = export_onnx(text_run, tmp_path / "models", name="sentiment")
    assert target == tmp_path / "models" / "sentiment-onnx" / "1"
    for name in (*SIDE_FILES, "vocab.txt"):
        assert (target / name).is_file(), name
    assert not list(target.parent.glob(".tmp-*"))
    pre = json.loads((target / "preprocessing.json").read_text())
    assert pre["preprocessing_inside_model"] is False and pre["max_length"] == 32
    assert pre["tokenizer"]["kind"] == "BertTokenizer" and pre["tokenizer"]["lowercase"] is True
    assert pre["tokenizer"]["vocabulary_files"] == ["vocab.txt"]
    assert {i["name"]: i["dtype"] for i in pre["inputs"]} == {
        "token_ids": "int32",
        "segment_ids": "int32",
        "padding_mask": "int32",
    }
    assert pre["outputs"][0]["name"] == "logits" and pre["outputs"][0]["shape"] == ["batch", 2]
    assert json.loads((target / "classes.json").read_text()) == ["negative", "positive"]
    assert json.loads((target / "export.json").read_text())["verification"]["max_abs_difference"] <= TOLERANCE

    # A client that has only the side files: real test texts plus one longer than max_length.
    with open(text_data["test"], encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][:12]
    texts.append(" ".join(["wonderful crew at the gate today"] * 12))
    special = pre["special_tokens"]
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=str(target / "vocab.txt"), lowercase=pre["tokenizer"]["lowercase"]
    )
    packer = keras_hub.layers.MultiSegmentPacker(
        sequence_length=pre["max_length"],
        start_value=special["start"]["id"],
        end_value=special["end"]["id"],
        pad_value=special["pad"]["id"],
        truncate="round_robin",
    )
    token_ids, segment_ids = packer(tokenizer(texts))
    token_ids, segment_ids = token_ids.numpy(), segment_ids.numpy()
    feed = {
        "token_ids": token_ids,
        "segment_ids": segment_ids,
        "padding_mask": (token_ids != special["pad"]["id"]).astype(np.int32),
    }
    got = run_onnx(target, feed)

    config, _, model = load_run(text_run)
    np.testing.assert_allclose(got, np.asarray(model(feed, training=False)), atol=TOLERANCE)

    # ... and the same answers as the run's own (length-trimmed) evaluation pipeline.
    modality = get_modality(config)
    records = Records({"text": texts}, ["positive"] * len(texts), list(range(len(texts))), "inline")
    modality.prepare(records, text_run)
    modality.use_model_inputs(model)
    batch, _ = next(iter(modality.dataset(records, np.zeros((len(texts), 2), np.float32), False, len(texts))))
    np.testing.assert_allclose(got, np.asarray(model(batch, training=False)), atol=TOLERANCE)


def test_image_onnx_answers_float_pixels_like_keras(tmp_path, image_run, digit_data):
    import tensorflow as tf

    target = export_onnx(image_run, tmp_path / "models")
    assert target == tmp_path / "models" / "tiny_image-onnx" / "1"
    for name in SIDE_FILES:
        assert (target / name).is_file(), name
    assert not (target / "vocab.txt").exists()
    pre = json.loads((target / "preprocessing.json").read_text())
    assert (pre["size"], pre["channels"], pre["value_range"], pre["dtype"]) == ([32, 32], 3, [0, 255], "float32")
    assert pre["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 32, 32, 3]}]
    assert len(json.loads((target / "classes.json").read_text())) == 3

    # Decode and resize as preprocessing.json says, one image per class.
    files = [next(Path(digit_data["test"]).glob(f"digit_{d}/*.png")) for d in range(3)]
    pixels = np.stack(
        [
            tf.round(
                tf.clip_by_value(
                    tf.image.resize(
                        tf.cast(tf.io.decode_png(f.read_bytes(), channels=3), tf.float32), pre["size"], antialias=True
                    ),
                    0.0,
                    255.0,
                )
            ).numpy()
            for f in files
        ]
    ).astype(np.float32)
    got = run_onnx(target, {"image": pixels})
    _, _, model = load_run(image_run)
    np.testing.assert_allclose(got, np.asarray(model(pixels, training=False)), atol=TOLERANCE)


def test_second_export_is_version_2_and_version_1_is_untouched(tmp_path, image_run):
    base = tmp_path / "models"
    first = export_onnx(image_run, base, name="digits")
    before = digest(first)
    second = export_onnx(image_run, base, name="digits")
    assert (first.name, second.name) == ("1", "2")
    assert digest(first) == before
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(image_run, base, name="digits", version=1)
    assert digest(first) == before and sorted(p.name for p in first.parent.iterdir()) == ["1", "2"]


def test_failed_verification_leaves_no_version(tmp_path, image_run, monkeypatch):
    monkeypatch.setattr(onnx_export, "VERIFY_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="differ from the Keras model"):
        export_onnx(image_run, tmp_path / "models", name="bad")
    assert not list((tmp_path / "models" / "bad-onnx").iterdir())


def test_unknown_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(TfsftError, match="finished run"):
        export_onnx(tmp_path / "runs" / "nope" / "1", tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_missing_packages_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # makes `import tf2onnx` raise ImportError
    with pytest.raises(ExportError, match=r'pip install -e "\.\[onnx\]"'):
        export_onnx(tmp_path / "run", tmp_path / "models")


def test_unconvertible_model_names_the_error_and_the_savedmodel_export(tmp_path):
    class Unconvertible:
        def export(self, *args, **kwargs):
            raise ValueError("Unsupported ops: Counter({'RegexSplitWithOffsets': 1})\n<long tf2onnx trace>")

    with pytest.raises(ExportError, match="RegexSplitWithOffsets") as info:
        onnx_export.convert(Unconvertible(), tmp_path / "model.onnx")
    assert "--format savedmodel" in str(info.value) and "long tf2onnx trace" not in str(info.value)


def test_no_verify_is_refused_for_onnx():
    with pytest.raises(SystemExit) as info:
        export_main(["--run", "x", "--format", "onnx", "--no-verify"])
    assert info.value.code == 2


def test_cli_exports_onnx_and_says_preprocessing_is_outside(tmp_path, text_run):
    result = run_cli(
        "tfsft.export", "--run", str(text_run), "--base-path", str(tmp_path), "--name", "cli", "--format", "onnx"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    target = tmp_path / "cli-onnx" / "1"
    assert f"Exported {target}" in result.stdout
    assert "Preprocessing is NOT inside the ONNX model" in result.stderr and "preprocessing.json" in result.stderr
    assert "Traceback" not in result.stderr
    assert (target / "model.onnx").is_file() and (target / "vocab.txt").is_file()
    assert not (tmp_path / "models.config").exists()  # TF Serving's config is for SavedModels only
