"""The local endpoint speaks TF Serving's REST API: routes, formats, metadata, versions and errors."""

import asyncio
import base64
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from aiohttp.test_utils import TestClient, TestServer

from tfsft.serve import ModelRegistry, make_app


def save_text_model(path):
    class TextModel(tf.Module):
        def __init__(self):
            super().__init__()
            self.names = tf.constant(["short", "long"])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            length = tf.cast(tf.strings.length(text), tf.float32)
            p_long = tf.sigmoid(length - 5.0)
            probabilities = tf.stack([1.0 - p_long, p_long], axis=-1)
            class_id = tf.argmax(probabilities, axis=-1)
            return {"probabilities": probabilities, "class_id": class_id,
                    "class_name": tf.gather(self.names, class_id)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def lengths(self, text):
            return {"length": tf.strings.length(text)}

    module = TextModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "lengths": module.lengths})


def save_pair_model(path):
    class PairModel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a"),
                                      tf.TensorSpec([None], tf.float32, name="b")])
        def serve(self, a, b):
            return {"total": tf.reduce_sum(a, axis=-1) + b}

    module = PairModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def save_image_model(path):
    class ImageModel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            means = tf.map_fn(lambda b: tf.reduce_mean(tf.cast(tf.io.decode_png(b), tf.float32)), image_bytes,
                              fn_output_signature=tf.float32)
            return {"mean": means, "thumbnail_bytes": image_bytes}

    module = ImageModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    save_text_model(root / "text" / "1")
    shutil.copytree(root / "text" / "1", root / "text" / "2")
    save_pair_model(root / "pair" / "1")
    save_image_model(root / "image" / "7")
    (root / "text" / ".tmp-3-abc").mkdir()  # an export in progress: never served
    return root


def request(base_path, method, path, body=None, raw=None, max_body=1024 * 1024, model_config=None, setup=None):
    """One HTTP request against a fresh app; returns (status, JSON)."""
    async def go():
        registry = ModelRegistry(None if model_config else base_path, model_config)
        registry.refresh()
        if setup:
            setup(registry)
        client = TestClient(TestServer(make_app(registry, max_body_bytes=max_body)))
        await client.start_server()
        try:
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            response = await client.request(method, path, data=data)
            return response.status, await response.json()
        finally:
            await client.close()
    return asyncio.run(go())


def test_row_format_multi_output(base):
    status, body = request(base, "POST", "/v1/models/text:predict", {"instances": ["hi", "a much longer text"]})
    assert status == 200
    first, second = body["predictions"]
    assert first["class_name"] == "short" and second["class_name"] == "long"
    assert first["class_id"] == 0 and len(first["probabilities"]) == 2
    assert sorted(first) == ["class_id", "class_name", "probabilities"]


def test_row_format_named_instances_and_columnar(base):
    status, body = request(base, "POST", "/v1/models/pair:predict",
                           {"instances": [{"a": [1, 2], "b": 3}, {"a": [0, 0], "b": 0.5}]})
    assert status == 200 and body == {"predictions": [6.0, 0.5]}  # one output: plain values per instance
    status, body = request(base, "POST", "/v1/models/pair:predict", {"inputs": {"a": [[1, 1]], "b": [1]}})
    assert status == 200 and body == {"outputs": [3.0]}
    status, body = request(base, "POST", "/v1/models/text:predict", {"inputs": ["hi"]})
    assert status == 200 and body["outputs"]["class_name"] == ["short"]


def test_signature_name_selects_signature(base):
    status, body = request(base, "POST", "/v1/models/text:predict",
                           {"signature_name": "lengths", "instances": ["abc", "hello"]})
    assert status == 200 and body == {"predictions": [3, 5]}


def test_b64_inputs_are_decoded_and_bytes_outputs_encoded(base):
    png = tf.io.encode_png(tf.fill([2, 2, 1], tf.constant(100, tf.uint8))).numpy()
    encoded = base64.b64encode(png).decode()
    status, body = request(base, "POST", "/v1/models/image:predict", {"instances": [{"b64": encoded}]})
    assert status == 200
    prediction = body["predictions"][0]
    assert prediction["mean"] == pytest.approx(100.0)
    assert prediction["thumbnail_bytes"] == {"b64": encoded}


def test_latest_version_served_and_versions_route(base):
    status, body = request(base, "GET", "/v1/models/text")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, body = request(base, "GET", "/v1/models/text/versions/1")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]
    status, _ = request(base, "POST", "/v1/models/text/versions/1:predict", {"instances": ["x"]})
    assert status == 200


def test_metadata_has_signature_defs(base):
    status, body = request(base, "GET", "/v1/models/text/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "text", "signature_name": "", "version": "2"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    serving = signatures["serving_default"]
    assert serving["method_name"] == "tensorflow/serving/predict"
    assert serving["inputs"]["text"]["dtype"] == "DT_STRING"
    assert serving["inputs"]["text"]["tensor_shape"]["dim"] == [{"size": "-1"}]
    assert set(serving["outputs"]) == {"probabilities", "class_id", "class_name"}
    assert "lengths" in signatures


def test_labels_from_models_config(base, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "text" base_path: "{base / "text"}" '
                      f'model_platform: "tensorflow" version_labels {{ key: "stable" value: 1 }} }} }}')
    status, body = request(base, "GET", "/v1/models/text/labels/stable", model_config=config)
    assert status == 200 and body["model_version_status"][0]["version"] == "1"
    status, body = request(base, "POST", "/v1/models/text/labels/canary:predict", {"instances": ["x"]},
                           model_config=config)
    assert status == 404 and "canary" in body["error"]


def test_new_version_picked_up_on_refresh(tmp_path):
    save_text_model(tmp_path / "m" / "1")
    registry = ModelRegistry(tmp_path)
    registry.refresh()
    assert registry.get("m").version == 1
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "5")
    assert registry.refresh() == ["loaded m v5"]
    assert registry.get("m").version == 5


@pytest.mark.parametrize("body, raw, fragment", [
    (None, b"{not json", "JSON Parse error"),
    ({"instances": ["a"], "inputs": ["a"]}, None, "Only one of"),
    ({"signature_name": "serving_default"}, None, "Missing 'instances' or 'inputs'"),
    ({"instances": [1, 2]}, None, "expects strings"),
    ({"instances": [{"a": ["x", "y"], "b": 1}]}, None, "expects numbers"),
    ({"inputs": {"a": [1, 2], "b": [1]}}, None, "shape"),
    ({"instances": [{"b64": "***not base64***"}]}, None, "base64"),
    ({"signature_name": "nope", "instances": ["a"]}, None, "not found in signature def"),
])
def test_malformed_requests_get_400(base, body, raw, fragment):
    model = "pair" if body and ("expects numbers" in fragment or fragment == "shape") else \
        "image" if fragment == "base64" else "text"
    status, answer = request(base, "POST", f"/v1/models/{model}:predict", body, raw=raw)
    assert status == 400, answer
    assert fragment in answer["error"]


def test_unknown_model_and_version_get_404(base):
    status, body = request(base, "POST", "/v1/models/nope:predict", {"instances": ["a"]})
    assert status == 404 and body["error"] == "Servable not found for request: Latest(nope)"
    status, body = request(base, "POST", "/v1/models/text/versions/9:predict", {"instances": ["a"]})
    assert status == 404 and "Specific(text, 9)" in body["error"]
    status, body = request(base, "GET", "/v1/models/text/versions/3")  # the .tmp-3 export is not a version
    assert status == 404


def test_oversized_body_gets_413(base):
    status, body = request(base, "POST", "/v1/models/text:predict", {"instances": ["x" * 5000]}, max_body=1000)
    assert status == 413 and "error" in body


def test_batching_merges_concurrent_requests(base):
    calls = []

    async def go():
        registry = ModelRegistry(base)
        registry.refresh()
        servable = registry.get("text")
        original = servable.signatures["serving_default"]

        def counting(**kwargs):
            calls.append(int(kwargs["text"].shape[0]))
            return original(**kwargs)

        servable.signatures["serving_default"] = counting
        app = make_app(registry, batching={"max_batch_size": 64, "timeout_ms": 50})
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            async def one(i):
                response = await client.post("/v1/models/text:predict", data=json.dumps({"instances": ["x" * i]}))
                return (await response.json())["predictions"][0]["class_name"]
            return await asyncio.gather(*[one(i) for i in range(1, 9)])
        finally:
            await client.close()

    names = asyncio.run(go())
    assert names == ["short"] * 5 + ["long"] * 3  # each request gets its own answer back
    assert sum(calls) == 8 and len(calls) < 8  # fewer model calls than requests
