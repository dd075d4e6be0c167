"""Bad input to the REST API and to the serve and export command lines: each is refused with the right HTTP
status or exit code 2, a message naming the culprit, no traceback, and no change to existing versions.

REST cases run against the session's tiny servables (tests/servables.py) on a real 127.0.0.1 socket;
the CLI cases are refused before any model loads, so they cost no training or export.
"""

import asyncio
import hashlib
import json
import shutil

import pytest
from aiohttp.test_utils import TestClient, TestServer

from servables import png_b64
from tfsft.cli.serve import main as serve_main
from tfsft.export import main as export_main
from tfsft.serving import RequestLimits, make_app


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def version_digest(base):
    """Every file of every version folder under a model base path."""
    return {str(v): digest(v) for v in sorted(base.glob("*/[0-9]*")) if v.is_dir()}


# ----------------------------------------------------------------------------------------- REST API
SMALL_LIMITS = {"max_body_bytes": 4000, "limits": RequestLimits(max_instances=4, max_input_bytes=300)}
B64_OF_TEXT = {"b64": "aGVsbG8="}  # valid base64, but "hello" is no image

# (id, model URL suffix, JSON body or raw bytes, expected status, fragments the error must contain)
REST_CASES = [
    ("malformed-json", "text:predict", b"{not json", 400, ["JSON Parse error", "offset: 1"]),
    ("empty-body", "text:predict", b"", 400, ["document is empty"]),
    ("not-utf8", "text:predict", b"\xff\xfe{", 400, ["JSON Parse error"]),
    ("too-deep", "text:predict", b"[" * 1900 + b"]" * 1900, 400, ["JSON Parse error"]),
    ("body-is-a-list", "text:predict", ["hi"], 400, ['["hi"]', "Is not object"]),
    ("both-formats", "text:predict", {"instances": ["a"], "inputs": ["a"]}, 400, ["only one of 'inputs' or"]),
    ("no-format", "text:predict", {"signature_name": "serving_default"}, 400, ["'inputs' or 'instances'"]),
    ("signature-not-a-string", "text:predict", {"signature_name": 7, "instances": ["a"]}, 400, ["'signature_name'"]),
    ("unknown-signature", "text:predict", {"signature_name": "nope", "instances": ["a"]}, 400, ['"nope"']),
    ("unknown-model", "nope:predict", {"instances": ["a"]}, 404, ["Latest(nope)"]),
    ("unknown-version", "text/versions/9:predict", {"instances": ["a"]}, 404, ["Specific(text, 9)"]),
    ("in-progress-version", "text/versions/3:predict", {"instances": ["a"]}, 404, ["Specific(text, 3)"]),
    ("unknown-label", "text/labels/canary:predict", {"instances": ["a"]}, 400, ["label: canary"]),
    ("instances-not-a-list", "text:predict", {"instances": "hi"}, 400, ["'instances' to be an list/array"]),
    ("no-instances", "text:predict", {"instances": []}, 400, ["No values in 'instances'"]),
    ("number-for-string", "text:predict", {"instances": [1]}, 400, ["JSON Value: 1 Type: Number", "string"]),
    ("null-for-string", "text:predict", {"instances": [None]}, 400, ["Type: Null", "key: text"]),
    ("bool-for-float", "pair:predict", {"inputs": {"a": [[True, 1]], "b": [1]}}, 400, ["Type: True", "input: a"]),
    ("string-for-float", "pair:predict", {"inputs": {"a": [["x", 1]], "b": [1]}}, 400, ['"x"', "float"]),
    ("wrong-shape", "pair:predict", {"instances": [{"a": [1, 2, 3], "b": 1}]}, 400, ["Input: a has shape [1,3]"]),
    ("ragged", "text:predict", {"inputs": [["a"], ["b", "c"]]}, 400, ["unexpected size: 2"]),
    (
        "rows-differ",
        "pair:predict",
        {"instances": [{"a": [1, 2], "b": 1}, {"a": [1, 2, 3], "b": 1}]},
        400,
        ["element: 1 key: a", "size: 2 but got: 3"],
    ),
    ("lossy-float", "pair:predict", {"inputs": {"a": [[16777217, 0]], "b": [0]}}, 400, ["16777217", "loss"]),
    ("plain-list-for-two-inputs", "pair:predict", {"instances": [[1, 2]]}, 400, ["multiple input tensors"]),
    ("object-then-list", "pair:predict", {"instances": [{"a": [1, 2], "b": 1}, [1, 2]]}, 400, ["item 1"]),
    ("unknown-input", "pair:predict", {"instances": [{"a": [1, 2], "c": 1}]}, 400, ["named input: c"]),
    ("missing-input", "pair:predict", {"inputs": {"a": [[1, 2]]}}, 400, ["Missing named input: b"]),
    ("bad-b64", "image:predict", {"instances": [{"b64": "***not base64***"}]}, 400, ["Unable to base64 decode"]),
    ("b64-with-extra-key", "image:predict", {"instances": [{"b64": png_b64(), "x": 1}]}, 400, ["named input: b64"]),
    ("not-an-image", "image:predict", {"instances": [B64_OF_TEXT]}, 400, ["Unknown image file format"]),
    ("too-many-instances", "text:predict", {"instances": ["a"] * 5}, 413, ["5 instances", "--max-instances"]),
    (
        "too-many-columnar-rows",
        "pair:predict",
        {"inputs": {"a": [[1, 2]] * 9, "b": [1] * 9}},
        413,
        ["9 instances", "at most 4"],
    ),
    (
        "too-many-input-bytes",
        "text:predict",
        {"instances": ["x" * 200, "y" * 200]},
        413,
        ["400 bytes", "--max-input-bytes"],
    ),
    ("body-too-large", "text:predict", {"instances": ["x" * 5000]}, 413, ["4000 bytes", "--max-body-bytes"]),
]


def request(registry, method, path, body):
    async def go():
        async with TestClient(TestServer(make_app(registry, **SMALL_LIMITS), host="127.0.0.1")) as client:
            data = body if isinstance(body, bytes) else json.dumps(body)
            response = await client.request(method, path, data=data)
            return response.status, response.content_type, await response.text()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def versions_before(serving_base):
    return version_digest(serving_base)


@pytest.mark.parametrize("case, path, body, status, fragments", REST_CASES, ids=[c[0] for c in REST_CASES])
def test_bad_rest_request(serving_registry, serving_base, versions_before, case, path, body, status, fragments):
    got, content_type, text = request(serving_registry, "POST", f"/v1/models/{path}", body)
    assert got == status, text
    assert content_type == "application/json"
    answer = json.loads(text)
    assert list(answer) == ["error"], answer  # TF Serving's error document
    for fragment in fragments:
        assert fragment in answer["error"], f"{fragment!r} not in {answer['error']!r}"
    assert "Traceback" not in text and 'File "' not in text
    assert version_digest(serving_base) == versions_before


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/v1/models/text:predict", 405),
        ("GET", "/v1/models/text/versions/x", 400),
        ("GET", "/v1/models/nope/metadata", 404),
        ("GET", "/v1/models/text/versions/9", 404),
    ],
)
def test_bad_rest_route(serving_registry, method, path, status):
    got, content_type, text = request(serving_registry, method, path, b"")
    assert (got, content_type) == (status, "application/json")
    error = json.loads(text)["error"]
    assert ("nope" in error) or ("9" in error) or (path in error)


def test_the_server_still_answers_after_every_bad_request(serving_registry):
    status, _, text = request(serving_registry, "POST", "/v1/models/text:predict", {"instances": ["hi"] * 4})
    assert status == 200 and len(json.loads(text)["predictions"]) == 4  # at the cap is accepted


# ----------------------------------------------------------------------------------------- command lines
def names(message: str, path) -> bool:
    """Whether the message names `path` (compared without whitespace: the paragraph may be wrapped)."""
    return "".join(str(path).split()) in "".join(message.split())


def refused(capsys, main, args) -> str:
    """Run a CLI that must refuse `args`: exit code 2 (argparse's SystemExit or the returned code)."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and "usage:" not in err
    assert "\n\n" not in err, f"not one paragraph: {err!r}"
    return " ".join(err.split())


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--port", "70000"], ["--port", "70000", "65535"]),
        (["--port", "0"], ["--port", "got 0"]),
        (["--port", "http"], ["--port", "'http'"]),
        (["--max-instances", "0"], ["--max-instances", "got 0"]),
        (["--max-input-bytes", "-5"], ["--max-input-bytes", "-5"]),
        (["--max-body-bytes", "1e9"], ["--max-body-bytes", "'1e9'"]),
        (["--shutdown-grace-seconds", "-1"], ["--shutdown-grace-seconds", "-1"]),
        (["--shutdown-grace-seconds", "nan"], ["--shutdown-grace-seconds", "nan"]),
        (["--poll-seconds", "-0.5"], ["--poll-seconds", "-0.5"]),
        (["--batch-timeout-ms", "0"], ["--batch-timeout-ms", "greater than 0"]),
        (["--max-batch-size", "1.5"], ["--max-batch-size", "'1.5'"]),
        (["--workers", "0"], ["--workers", "got 0"]),
        (["--host", ""], ["--host", "empty"]),
        (["--model-base-path", ""], ["--model-base-path", "empty"]),
        (["--model-base-path", "a", "--model-config-file", "b"], ["not allowed with"]),
        (["--bogus"], ["--bogus"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) and value and value[0].startswith("--") else None,
)
def test_bad_serve_argument(capsys, args, fragments):
    message = refused(capsys, serve_main, args)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_serve_base_path_that_is_a_file(capsys, tmp_path):
    (tmp_path / "models").write_text("not a folder")
    message = refused(capsys, serve_main, ["--model-base-path", str(tmp_path / "models"), "--port", "8599"])
    assert names(message, tmp_path / "models") and "is not a folder" in message


# ----------------------------------------------------------------------------------------- export
@pytest.fixture
def export_world(tmp_path):
    """A run directory (not completed) and a base path with one existing version that no refusal may touch."""
    run = tmp_path / "runs" / "tiny" / "20200101-000000"
    run.mkdir(parents=True)
    (run / "status.json").write_text('{"state": "running"}')
    (run / "config.yaml").write_text("name: tiny\n")
    base = tmp_path / "saved_models"
    (base / "tiny" / "1" / "variables").mkdir(parents=True)
    (base / "tiny" / "1" / "saved_model.pb").write_bytes(b"existing version")
    before = (digest(tmp_path), sorted(str(p) for p in tmp_path.rglob("*")))
    yield run, base
    assert (digest(tmp_path), sorted(str(p) for p in tmp_path.rglob("*"))) == before, "a refusal wrote something"


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--version", "-3"], ["--version", "-3", "positive integer"]),
        (["--version", "0"], ["--version", "got 0"]),
        (["--version", "abc"], ["--version", "'abc'"]),
        (["--version", "2.5"], ["--version", "'2.5'"]),
        (["--version", "99999999999999999999"], ["--version", "int64"]),
        (["--name", "../outside"], ["--name", "'../outside'", "single folder name"]),
        (["--name", ""], ["--name", "empty"]),
        (["--name", "a/b"], ["--name", "'a/b'"]),
        (["--name", ".hidden"], ["--name", "'.hidden'"]),
        (["--name", "two words"], ["--name", "'two words'"]),
        (["--format", "tflite"], ["--format", "'tflite'"]),
        (["--base-path", ""], ["--base-path", "empty"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) and value and value[0].startswith("--") else None,
)
def test_bad_export_argument(capsys, export_world, extra, fragments):
    run, base = export_world
    message = refused(capsys, export_main, ["--run", str(run), "--base-path", str(base), *extra])
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_export_refuses_a_run_that_did_not_complete(capsys, export_world):
    run, base = export_world
    message = refused(capsys, export_main, ["--run", str(run), "--base-path", str(base), "--version", "2"])
    assert names(message, run) and "'running'" in message and "--force" in message


def test_export_refuses_a_run_without_status(capsys, export_world):
    run, base = export_world
    (run / "status.json").unlink()
    message = refused(capsys, export_main, ["--run", str(run), "--base-path", str(base)])
    assert names(message, run) and "no readable status.json" in message
    (run / "status.json").write_text('{"state": "running"}')  # as export_world found it


def test_export_refuses_a_missing_run(capsys, export_world, tmp_path):
    _, base = export_world
    message = refused(capsys, export_main, ["--run", str(tmp_path / "no-such-run"), "--base-path", str(base)])
    assert names(message, tmp_path / "no-such-run") and "does not exist" in message


@pytest.mark.slow
def test_export_force_exports_an_unfinished_run_and_says_its_state(capsys, tmp_path, image_run):
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    (run / "status.json").write_text('{"state": "interrupted"}')
    base = tmp_path / "saved_models"
    (base / "tiny_image" / "1").mkdir(parents=True)
    (base / "tiny_image" / "1" / "saved_model.pb").write_bytes(b"existing version")
    before = digest(base / "tiny_image" / "1")
    code = export_main(["--run", str(run), "--base-path", str(base), "--force", "--no-verify"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "'interrupted'" in err and "--force" in err
    assert (base / "tiny_image" / "2" / "saved_model.pb").is_file()  # the next free version
    assert digest(base / "tiny_image" / "1") == before
