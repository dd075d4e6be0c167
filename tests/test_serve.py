"""The local endpoint speaks TF Serving's REST API: routes, formats, metadata, versions and errors.

Tiny SavedModels are written once per session; each test starts an aiohttp TestServer on the
shared, already-loaded registry (no pytest-aiohttp: plain asyncio.run around TestClient).
"""

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from servables import png_b64
from tfsft.cli.serve import main
from tfsft.serving import ModelRegistry, format_response, make_app


@pytest.fixture(scope="session")
def base(serving_base):
    return serving_base


@pytest.fixture(scope="session")
def registry(serving_registry):
    return serving_registry


def call(registry, method, path, body=None, raw=None, **app_options):
    """One HTTP request against a fresh app on `registry`; returns (status, parsed JSON, raw text)."""

    async def go():
        async with TestClient(TestServer(make_app(registry, **app_options))) as client:
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            response = await client.request(method, path, data=data)
            text = await response.text()
            assert response.content_type == "application/json"
            return response.status, json.loads(text), text

    return asyncio.run(go())


# ----------------------------------------------------------------------------------------- predict formats
def test_row_format_multi_output(registry):
    status, body, text = call(registry, "POST", "/v1/models/text:predict", {"instances": ["hi", "a much longer text"]})
    assert status == 200
    assert body == {
        "predictions": [
            {"probabilities": [0.75, 0.25], "class_id": 0, "class_name": "SHORT"},
            {"probabilities": [0.0, 1.0], "class_id": 1, "class_name": "LONG"},
        ]
    }
    assert "[0.0,1.0]" in text  # whole floats keep their decimal point, as TF Serving writes them


def test_row_format_named_instances_single_and_multi_input(registry):
    status, body, _ = call(registry, "POST", "/v1/models/text:predict", {"instances": [{"text": "hi"}]})
    assert status == 200 and body["predictions"][0]["class_name"] == "SHORT"
    status, body, _ = call(
        registry, "POST", "/v1/models/pair:predict", {"instances": [{"a": [1, 2], "b": 3}, {"a": [0, 0], "b": 0.5}]}
    )
    assert status == 200 and body == {"predictions": [6.0, 0.5]}  # one output: bare values per instance


def test_columnar_format(registry):
    expected = {"outputs": {"probabilities": [[0.75, 0.25]], "class_id": [0], "class_name": ["SHORT"]}}
    assert call(registry, "POST", "/v1/models/text:predict", {"inputs": ["hi"]})[:2] == (200, expected)
    assert call(registry, "POST", "/v1/models/text:predict", {"inputs": {"text": ["hi"]}})[:2] == (200, expected)
    status, body, _ = call(
        registry, "POST", "/v1/models/pair:predict", {"inputs": {"a": [[1, 1], [2, 2]], "b": [1, 0]}}
    )
    assert status == 200 and body == {"outputs": [3.0, 4.0]}  # one output: its value, not an object


def test_signature_name_selects_signature(registry):
    status, body, _ = call(
        registry, "POST", "/v1/models/text:predict", {"signature_name": "lengths", "instances": ["abc", "hello"]}
    )
    assert status == 200 and body == {"predictions": [3, 5]}
    status, body, _ = call(
        registry, "POST", "/v1/models/text:predict", {"signature_name": "lengths", "inputs": ["abc"]}
    )
    assert status == 200 and body == {"outputs": [3]}


def test_b64_input_is_decoded_and_bytes_output_is_b64(registry):
    encoded = png_b64()
    status, body, _ = call(registry, "POST", "/v1/models/image:predict", {"instances": [{"b64": encoded}]})
    assert status == 200
    assert body == {"predictions": [{"mean": 100.0, "thumbnail_bytes": {"b64": encoded}}]}
    unpadded = encoded.rstrip("=")  # accepted like absl::Base64Unescape does
    status, body, _ = call(
        registry, "POST", "/v1/models/image:predict", {"inputs": {"image_bytes": [{"b64": unpadded}]}}
    )
    assert status == 200 and body["outputs"]["mean"] == [100.0]


def test_float_formatting_matches_tf_serving():
    values = np.array([0.1, 1 / 3, 2.0, 1e-5, 1e6, -0.0, np.nan, np.inf, -np.inf], np.float32)
    assert format_response({"x": values}, row_format=False) == (
        '{"outputs":[0.1,0.333333343,2.0,1e-05,1e+06,-0.0,NaN,Infinity,-Infinity]}'
    )
    text = format_response({"x": np.array([0.1], np.float64), "name": np.array([b"\xff"], object)}, row_format=True)
    assert text == '{"predictions":[{"name":{"b64":"/w=="},"x":0.1}]}'  # undecodable strings go base64


# ----------------------------------------------------------------------------------------- status and metadata
AVAILABLE = {"error_code": "OK", "error_message": ""}


def test_model_status(registry):
    status, body, _ = call(registry, "GET", "/v1/models/text")
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": AVAILABLE},
            {"version": "1", "state": "AVAILABLE", "status": AVAILABLE},
        ]
    }
    status, body, _ = call(registry, "GET", "/v1/models/text/versions/1")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": AVAILABLE}]}


def test_metadata(registry):
    status, body, _ = call(registry, "GET", "/v1/models/image/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "image", "signature_name": "", "version": "7"}
    signature_defs = body["metadata"]["signature_def"]["signature_def"]
    assert set(signature_defs) == {"serving_default", "__saved_model_init_op"}  # TF Serving lists both
    serving = signature_defs["serving_default"]
    vector = {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert serving["inputs"] == {
        "image_bytes": {"dtype": "DT_STRING", "tensor_shape": vector, "name": "serving_default_image_bytes:0"}
    }
    assert {k: (v["dtype"], v["tensor_shape"]) for k, v in serving["outputs"].items()} == {
        "mean": ("DT_FLOAT", vector),
        "thumbnail_bytes": ("DT_STRING", vector),
    }
    assert serving["method_name"] == "tensorflow/serving/predict"
    status, body, _ = call(registry, "GET", "/v1/models/text/versions/1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    assert set(body["metadata"]["signature_def"]["signature_def"]) >= {"serving_default", "lengths"}


# ----------------------------------------------------------------------------------------- versions and labels
def test_latest_version_by_default_and_versions_route(registry):
    assert registry.get("text").version == 2
    _, latest, _ = call(registry, "POST", "/v1/models/text:predict", {"instances": ["hi"]})
    _, first, _ = call(registry, "POST", "/v1/models/text/versions/1:predict", {"instances": ["hi"]})
    assert latest["predictions"][0]["class_name"] == "SHORT" and first["predictions"][0]["class_name"] == "short"


def test_warmup_records_run_at_load(registry):
    assert registry.get("text", 2).warm_up() == 1


def test_models_config_labels_and_version_policy(base, tmp_path):
    config = base / "models.config"
    config.write_text("""
model_config_list {
  config { name: "text" base_path: "text" model_platform: "tensorflow"
           model_version_policy { all {} }
           version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } }
  config { name: "pinned" base_path: "text" model_platform: "tensorflow"
           model_version_policy { specific { versions: 1 } } }
}
""")
    labelled = ModelRegistry(model_config_file=config)  # base_path is relative to the config's folder
    labelled.refresh()
    status, body, _ = call(labelled, "GET", "/v1/models/text/labels/stable")
    assert status == 200 and body == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": AVAILABLE}]
    }
    status, body, _ = call(labelled, "POST", "/v1/models/text/labels/stable:predict", {"instances": ["hi"]})
    assert status == 200 and body["predictions"][0]["class_name"] == "short"
    status, body, _ = call(labelled, "GET", "/v1/models/text/labels/canary/metadata")
    assert status == 200 and body["model_spec"]["version"] == "2"
    status, body, _ = call(labelled, "POST", "/v1/models/text/labels/nope:predict", {"instances": ["hi"]})
    assert (status, body) == (400, {"error": "Unrecognized servable version label: nope"})  # TF Serving's code
    status, body, _ = call(labelled, "GET", "/v1/models/pinned")
    assert status == 200 and [v["version"] for v in body["model_version_status"]] == ["1"]


def test_new_version_is_served_without_restart(base, tmp_path):
    model = tmp_path / "models" / "pair"
    shutil.copytree(base / "pair" / "1", model / "1")
    registry = ModelRegistry(base_path=tmp_path / "models")
    assert registry.refresh() == [f"loaded pair version 1 from {model / '1'}"]

    async def go():
        async with TestClient(TestServer(make_app(registry, poll_seconds=0.05))) as client:

            async def versions():
                body = await (await client.get("/v1/models/pair")).json()
                return [v["version"] for v in body["model_version_status"]]

            assert await versions() == ["1"]
            shutil.copytree(base / "pair" / "1", model / ".tmp-5-x")
            (model / ".tmp-5-x").rename(model / "5")  # how the exporter publishes a version: one rename
            deadline = time.monotonic() + 20
            while await versions() != ["5", "1"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await versions() == ["5", "1"]
            metadata = await (await client.get("/v1/models/pair/metadata")).json()
            assert metadata["model_spec"]["version"] == "5"
            shutil.rmtree(model / "1")
            while await versions() != ["5"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await versions() == ["5"]

    asyncio.run(go())


def test_broken_version_is_reported_not_fatal(base, tmp_path):
    shutil.copytree(base / "pair" / "1", tmp_path / "pair" / "1")
    (tmp_path / "pair" / "2").mkdir()
    (tmp_path / "pair" / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    registry = ModelRegistry(base_path=tmp_path)
    registry.refresh()
    assert registry.get("pair").version == 1  # the broken newer version does not hide the good one
    assert registry.refresh() == []  # unchanged broken files are not retried every poll
    status, body, _ = call(registry, "GET", "/v1/models/pair/versions/2")
    assert status == 200
    (entry,) = body["model_version_status"]
    assert entry["version"] == "2" and entry["state"] == "END" and entry["status"]["error_code"] != "OK"
    assert entry["status"]["error_message"]


# ----------------------------------------------------------------------------------------- errors
NUMBER_FOR_STRING = (
    "Failed to process element: 0 key: text of 'instances' list. Error: INVALID_ARGUMENT: "
    "JSON Value: 1 Type: Number is not of expected type: string"
)


@pytest.mark.parametrize(
    "model, body, raw, expected",
    [
        (
            "text",
            None,
            b"{not json",
            "JSON Parse error: Expecting property name enclosed in double quotes at offset: 1",
        ),
        ("text", None, b"", "JSON Parse error: The document is empty"),
        ("text", ["hi"], None, 'JSON Value: ["hi"] Is not object'),
        (
            "text",
            {"instances": ["a"], "inputs": ["a"]},
            None,
            'JSON Value: {"instances": ["a"], "inputs": ["a"]} Not formatted correctly expecting only one of '
            "'inputs' or 'instances' keys to exist",
        ),
        ("text", {"signature_name": "serving_default"}, None, "Missing 'inputs' or 'instances' key"),
        (
            "text",
            {"signature_name": 7, "instances": ["a"]},
            None,
            """JSON Value: {"signature_name": 7, "instances": ["a"]} not formatted correctly. """
            "'signature_name' key must be a string value.",
        ),
        (
            "text",
            {"signature_name": "nope", "instances": ["a"]},
            None,
            'Serving signature name: "nope" not found in signature def',
        ),
        ("text", {"instances": [1]}, None, NUMBER_FOR_STRING),
        (
            "pair",
            {"inputs": {"a": [["x", 1]], "b": [1]}},
            None,
            "Failed to process input: a of 'inputs' object. Error: INVALID_ARGUMENT: "
            'JSON Value: "x" Type: String is not of expected type: float',
        ),
        (
            "pair",
            {"inputs": {"a": [1, 2], "b": [1]}},
            None,
            "Input: a has shape [2], but the signature expects shape [-1,2] (dtype float)",
        ),
        (
            "pair",
            {"instances": [{"a": [1, 2, 3], "b": 1}]},
            None,
            "Input: a has shape [1,3], but the signature expects shape [-1,2] (dtype float)",
        ),
        (
            "text",
            {"inputs": [["a"], ["b", "c"]]},
            None,
            "Failed to process input: text of 'inputs' object. Error: INVALID_ARGUMENT: "
            "Encountered list at unexpected size: 2 at level: 1 expected size: 1",
        ),
        (
            "pair",
            {"instances": [{"a": [1, 2], "b": 1}, {"a": [1, 2, 3], "b": 1}]},
            None,
            "Failed to process element: 1 key: a of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting tensor size: 2 but got: 3",
        ),
        (
            "pair",
            {"inputs": {"a": [[16777217, 0]], "b": [0]}},
            None,
            "Failed to process input: a of 'inputs' object. Error: INVALID_ARGUMENT: "
            "Cannot convert JSON value: 16777217 to float without loss of precision.",
        ),
        (
            "pair",
            {"instances": [[1, 2]]},
            None,
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map",
        ),
        (
            "pair",
            {"instances": [{"a": [1, 2], "c": 1}]},
            None,
            "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON object: does not have named input: c",
        ),
        ("pair", {"inputs": {"a": [[1, 2]]}}, None, "Missing named input: b in 'inputs' object."),
        (
            "image",
            {"instances": [{"b64": "***not base64***"}]},
            None,
            "Failed to process element: 0 key: image_bytes of 'instances' list. Error: INVALID_ARGUMENT: "
            "Unable to base64 decode",
        ),
    ],
)
def test_bad_requests_get_400(registry, model, body, raw, expected):
    status, answer, _ = call(registry, "POST", f"/v1/models/{model}:predict", body, raw=raw)
    assert (status, answer) == (400, {"error": expected})


def test_model_errors_are_400_without_traces(registry):
    not_png = base64.b64encode(b"definitely not a png").decode()
    status, body, _ = call(registry, "POST", "/v1/models/image:predict", {"instances": [{"b64": not_png}]})
    assert status == 400
    assert body["error"].startswith("Unknown image file format")
    assert "Traceback" not in body["error"] and 'File "' not in body["error"] and "[Op:" not in body["error"]


def test_not_found(registry):
    assert call(registry, "POST", "/v1/models/nope:predict", {"instances": ["a"]})[:2] == (
        404,
        {"error": "Servable not found for request: Latest(nope)"},
    )
    assert call(registry, "POST", "/v1/models/text/versions/9:predict", {"instances": ["a"]})[:2] == (
        404,
        {"error": "Servable not found for request: Specific(text, 9)"},
    )
    assert call(registry, "GET", "/v1/models/nope")[:2] == (404, {"error": "Could not find any versions of model nope"})
    assert call(registry, "GET", "/v1/models/text/versions/3")[:2] == (  # the .tmp-3 export is not a version
        404,
        {"error": "Could not find version 3 of model text"},
    )
    assert call(registry, "GET", "/v1/models/nope/metadata")[0] == 404


def test_wrong_method_and_unknown_path(registry):
    status, body, _ = call(registry, "GET", "/v1/models/text:predict")
    assert (status, body) == (405, {"error": "Malformed request: GET /v1/models/text:predict"})
    assert call(registry, "POST", "/v1/models/text/metadata", {})[0] == 405
    assert call(registry, "GET", "/v1/models/text/versions/x")[:2] == (
        400,
        {"error": "Malformed request: GET /v1/models/text/versions/x"},
    )


def test_oversized_body_gets_413(registry):
    status, body, _ = call(
        registry, "POST", "/v1/models/text:predict", {"instances": ["x" * 5000]}, max_body_bytes=1000
    )
    assert status == 413 and "1000 bytes" in body["error"]


# ----------------------------------------------------------------------------------------- batching
def test_batching_merges_concurrent_requests_and_isolates_failures(registry):
    servable = registry.get("text")
    original = servable.signatures["serving_default"]
    calls = []

    def counting(**kwargs):
        calls.append(int(kwargs["text"].shape[0]))
        return original(**kwargs)

    async def go():
        app = make_app(registry, batching={"max_batch_size": 64, "timeout_ms": 100})
        async with TestClient(TestServer(app)) as client:

            async def predict(model, instances):
                response = await client.post(f"/v1/models/{model}:predict", data=json.dumps({"instances": instances}))
                return response.status, await response.json()

            texts = await asyncio.gather(*[predict("text", ["x" * i]) for i in range(1, 9)])
            good, bad = {"b64": png_b64()}, {"b64": base64.b64encode(b"junk").decode()}
            images = await asyncio.gather(
                predict("image", [good]), predict("image", [bad]), predict("image", [good, good])
            )
            return texts, images

    servable.signatures["serving_default"] = counting
    try:
        texts, images = asyncio.run(go())
    finally:
        servable.signatures["serving_default"] = original
    assert [body["predictions"][0]["class_name"] for _, body in texts] == ["SHORT"] * 4 + ["LONG"] * 4
    assert sum(calls) == 8 and len(calls) < 8  # fewer model calls than requests, each answer its own
    (ok1, body1), (bad_status, bad_body), (ok2, body2) = images
    assert ok1 == ok2 == 200 and bad_status == 400  # a bad image in the batch fails only its own request
    assert [p["mean"] for p in body1["predictions"] + body2["predictions"]] == [100.0] * 3
    assert "Unknown image file format" in bad_body["error"]


# ----------------------------------------------------------------------------------------- command line
def test_start_up_errors_exit_2_with_one_paragraph(base, tmp_path, capsys):
    def error_text():
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return " ".join(err.split())  # the paragraph is wrapped to the terminal width

    assert main(["--model-base-path", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in error_text()
    (tmp_path / "empty").mkdir()
    assert main(["--model-base-path", str(tmp_path / "empty")]) == 2
    assert "No model to serve" in error_text()
    assert main(["--model-config-file", str(tmp_path / "missing.config")]) == 2
    assert "does not exist" in error_text()
    (tmp_path / "bad.config").write_text("model_config_list { config { name: ")
    assert main(["--model-config-file", str(tmp_path / "bad.config")]) == 2
    assert "is not a valid TF Serving models.config" in error_text()

    shutil.copytree(base / "pair" / "1", tmp_path / "models" / "pair" / "1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--model-base-path", str(tmp_path / "models"), "--port", str(port), "--poll-seconds", "0"]) == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in error_text()


def test_module_imports_nothing_from_training():
    code = (
        "import sys, tfsft.serve; "
        "print(sorted(m for m in sys.modules if m.startswith(('tfsft.', 'keras', 'tensorflow'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "tfsft.trainer" not in loaded and "keras" not in loaded and "'tensorflow'" not in loaded
