"""Export contract: versioned layout, raw-input signatures, parity with Keras in a TF-only process, atomicity."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, files_while_written, text_config, validated
from tfsft import export as export_module
from tfsft import export_verify
from tfsft.cli.predict import main as predict_main
from tfsft.export import ExportError, export_run
from tfsft.trainer import train

# Runs in a fresh interpreter: imports only tensorflow + tensorflow_text, as TF Serving would have.
# One process answers every {signature: request} it is given: each TensorFlow import costs seconds.
CLIENT = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
path, request_file = sys.argv[1:3]
loaded = tf.saved_model.load(path)
answers = {}
for signature, request in json.load(open(request_file)).items():
    fn = loaded.signatures[signature]
    if signature == "serving_pixels":
        inputs = {k: tf.constant(v, tf.float32) for k, v in request.items()}
    else:
        inputs = {k: tf.constant([bytes.fromhex(x) for x in v]) for k, v in request.items()}
    out = fn(**inputs)
    answers[signature] = {k: (v.numpy().astype(str).tolist() if v.dtype == tf.string else v.numpy().tolist())
                          for k, v in out.items()}
print(json.dumps(answers))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"keras_hub", "tfsft"})))
"""


def call_in_fresh_process(path, requests: dict, tmp_path) -> dict:
    """{signature: request} -> {signature: outputs}, all answered by one fresh TF-only process."""
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(requests))
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, str(path), str(request_file)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == [], "the client process loaded KerasHub or tfsft"
    answers = json.loads(lines[-2])
    assert sorted(answers) == sorted(requests)
    return answers


def keras_probabilities(run_dir, modality_inputs):
    from tfsft.runs import load_model_file

    model = load_model_file(run_dir / "model.keras")
    logits = model.predict(modality_inputs, verbose=0)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_data):
    tmp = tmp_path_factory.mktemp("text_export")
    # A cls head, so the export runs the last encoder layer on the first token only (tfsft/first_token.py); the
    # mean-pooled default is exported by tests/test_quality.py and tests/test_onnx_export.py.
    config = text_config(text_data, tmp, training={"epochs": 3}, model={"head": {"pooling": "cls"}})
    return train(validated(config), verbose=0).run_dir


def test_text_export_answers_raw_strings_like_the_keras_model(tmp_path, text_run):
    target = export_run(text_run, tmp_path / "saved_models", name="sentiment")
    assert target == tmp_path / "saved_models" / "sentiment" / "1"
    for name in (
        "saved_model.pb",
        "variables",
        "assets.extra/classes.json",
        "assets.extra/config.yaml",
        "assets.extra/metrics.json",
        "assets.extra/model_card.md",
        "assets.extra/tf_serving_warmup_requests",
    ):
        assert (target / name).exists(), name
    config_text = (tmp_path / "saved_models" / "models.config").read_text()
    assert 'name: "sentiment"' in config_text and 'model_platform: "tensorflow"' in config_text

    texts = ["what a great wonderful crew", "the worst flight my bag is broken", "gate seat today"]
    out = call_in_fresh_process(target, {"serving_default": {"text": [t.encode().hex() for t in texts]}}, tmp_path)[
        "serving_default"
    ]
    assert out["class_name"][:2] == ["positive", "negative"]
    assert len(out["top_k_class_names"][0]) == 2

    # The same texts through the training-time pipeline and the Keras model.
    from tfsft.data import Records
    from tfsft.first_token import FirstTokenTransformerEncoder
    from tfsft.modalities import get_modality
    from tfsft.runs import load_run

    config, classes, model = load_run(text_run)
    assert isinstance(model.get_layer("bert_backbone").get_layer("transformer_layer_1"), FirstTokenTransformerEncoder)
    modality = get_modality(config)
    records = Records({"text": texts}, ["positive"] * 3, [1, 2, 3], "inline")
    modality.prepare(records, text_run)
    modality.use_model_inputs(model)
    batch, _ = next(iter(modality.dataset(records, np.zeros((3, 2), np.float32), False, 3)))
    expected = keras_probabilities(text_run, batch)
    np.testing.assert_allclose(np.array(out["probabilities"]), expected, atol=1e-5)


def test_tf_serving_launch_script_dry_run_mounts_the_exported_folders(tmp_path, text_run):
    """scripts/serve_tfserving.sh with DRY_RUN=1 prints the `docker run` it would launch (no Docker here): the
    exported folders are mounted where models.docker.config points, and a wrong folder is refused."""
    base = tmp_path / "saved_models"
    # The exports' fresh-process verification is tested elsewhere; here it would only add two TF imports.
    export_run(text_run, base, name="sentiment", verify=False)
    export_run(text_run, base, name="other", verify=False)
    docker_config = (base / "models.docker.config").read_text()
    assert 'base_path: "/models/sentiment"' in docker_config and 'base_path: "/models/other"' in docker_config

    script = Path(__file__).resolve().parents[1] / "scripts" / "serve_tfserving.sh"
    env = {**os.environ, "DRY_RUN": "1", "TFSERVING_IMAGE": "tensorflow/serving:test"}
    one = subprocess.run([str(script), str(base / "sentiment")], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    assert f"{base / 'sentiment'}:/models/sentiment:ro" in one.stdout
    assert "--model_name=sentiment --model_base_path=/models/sentiment" in one.stdout
    assert "tensorflow/serving:test" in one.stdout and "exported with: tensorflow 2." in one.stdout
    every = subprocess.run([str(script), str(base)], capture_output=True, text=True, env=env)
    assert every.returncode == 0, every.stderr
    assert "--model_config_file=/models/models.docker.config" in every.stdout
    assert "127.0.0.1:8501:8501" in every.stdout
    wrong = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True, env=env)
    assert wrong.returncode == 2 and "python -m tfsft.export" in wrong.stderr


def test_warmup_file_holds_a_predict_request(tmp_path, text_run):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    target = export_run(text_run, tmp_path / "sm", name="warm", verify=False)  # the warm-up file is written either way
    records = list(tf.data.TFRecordDataset(str(target / "assets.extra" / "tf_serving_warmup_requests")))
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    request = log.predict_log.request
    assert request.model_spec.name == "warm" and request.model_spec.signature_name == "serving_default"
    assert len(tf.make_ndarray(request.inputs["text"])) >= 1


def test_image_export_answers_jpeg_and_png_bytes(tmp_path, image_run, digit_data):
    import tensorflow as tf

    # No built-in verification: this test compares the fresh process's answers with Keras itself.
    target = export_run(image_run, tmp_path / "saved_models", verify=False)
    png = next(Path(digit_data["test"]).glob("digit_2/*.png"))
    pixels = tf.io.decode_png(png.read_bytes(), channels=3)
    jpeg = tf.io.encode_jpeg(pixels, quality=100).numpy()
    answers = call_in_fresh_process(
        target,
        {
            "serving_default": {"image_bytes": [png.read_bytes().hex(), jpeg.hex()]},
            "serving_pixels": {"pixels": tf.cast(pixels, tf.float32)[None].numpy().tolist()},
        },
        tmp_path,
    )
    out, pixels_out = answers["serving_default"], answers["serving_pixels"]
    assert set(out["class_name"]) <= {"digit_0", "digit_1", "digit_2"}
    expected = keras_probabilities(image_run, tf.cast(pixels, tf.float32)[None].numpy())
    np.testing.assert_allclose(np.array(out["probabilities"][0]), expected[0], atol=1e-5)
    np.testing.assert_allclose(pixels_out["probabilities"][0], out["probabilities"][0], atol=1e-5)


def test_versions_increase_and_existing_ones_are_never_touched(tmp_path, text_run):
    base = tmp_path / "sm"
    first = export_run(text_run, base, name="m", verify=False)
    before = digest(first)
    second = export_run(text_run, base, name="m", verify=False)
    assert (first.name, second.name) == ("1", "2")
    with pytest.raises(ExportError, match="already exists"):
        export_run(text_run, base, name="m", version=1, verify=False)
    assert digest(first) == before


def test_failed_verification_leaves_no_version(tmp_path, text_run, monkeypatch):
    monkeypatch.setattr(export_verify, "VERIFY_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="differ from the Keras model"):
        export_run(text_run, tmp_path / "sm", name="bad")
    assert not [p for p in (tmp_path / "sm" / "bad").iterdir()]


def test_sigkill_during_export_leaves_no_new_version(tmp_path, text_run):
    base = tmp_path / "sm"
    existing = export_run(text_run, base, name="k", verify=False)
    before = digest(existing)
    command = [sys.executable, "-m", "tfsft.export", "--run", str(text_run), "--base-path", str(base), "--name", "k"]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    deadline = time.time() + 180
    while time.time() < deadline and not files_while_written(base / "k", ".tmp-*/saved_model.pb"):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert sorted(p.name for p in (base / "k").iterdir() if p.name.isdigit()) == ["1"]
    assert digest(existing) == before


def test_predict_cli_prints_json_lines(tmp_path, text_run, capsys):
    export_run(text_run, tmp_path / "sm", name="cli", verify=False)
    code = predict_main(["--model", str(tmp_path / "sm" / "cli"), "so great and happy", "awful and broken"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["class_name"] for r in rows] == ["positive", "negative"]
    assert rows[0]["input"] == "so great and happy" and len(rows[0]["probabilities"]) == 2


def test_models_config_lists_only_savedmodel_folders(tmp_path):
    base = tmp_path / "saved_models"
    (base / "sentiment" / "3").mkdir(parents=True)
    (base / "sentiment" / "3" / "saved_model.pb").write_bytes(b"")
    (base / "sentiment-onnx" / "1").mkdir(parents=True)
    (base / "sentiment-onnx" / "1" / "model.onnx").write_bytes(b"")
    (base / "half-written" / ".tmp-1").mkdir(parents=True)
    export_module.write_models_config(base)
    for name in ("models.config", "models.docker.config"):
        text = (base / name).read_text()
        assert 'name: "sentiment"' in text
        assert "onnx" not in text and "half-written" not in text
