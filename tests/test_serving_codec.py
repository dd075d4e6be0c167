"""The REST JSON codec on its own: TF Serving's request rules and response format, without TensorFlow."""

import base64
import subprocess
import sys

import numpy as np
import pytest

from tfsft.serving.codec import InputSpec, format_response, json_to_array, parse_json_body, request_arrays
from tfsft.serving.errors import ServingError
from tfsft.serving.limits import RequestLimits, requested_rows

TEXT = {"text": InputSpec("string", (None,))}
PAIR = {"a": InputSpec("float32", (None, 2)), "b": InputSpec("float32", (None,))}


def error_of(fn, *args) -> tuple[int, str]:
    with pytest.raises(ServingError) as caught:
        fn(*args)
    return caught.value.status, caught.value.message


def test_codec_and_limits_import_without_tensorflow():
    code = (
        "import sys, tfsft.serving.codec, tfsft.serving.limits, tfsft.versions; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'aiohttp')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_row_and_columnar_requests_become_batched_arrays():
    arrays, row_format = request_arrays({"instances": ["hi", {"b64": base64.b64encode(b"\xff").decode()}]}, TEXT)
    assert row_format and arrays["text"].dtype == object and arrays["text"].tolist() == [b"hi", b"\xff"]
    arrays, row_format = request_arrays({"inputs": {"a": [[1, 2], [3, 4.5]], "b": [0, 1]}}, PAIR)
    assert not row_format
    np.testing.assert_array_equal(arrays["a"], np.array([[1, 2], [3, 4.5]], np.float32))
    assert arrays["a"].dtype == np.float32 and arrays["b"].shape == (2,)
    arrays, _ = request_arrays({"instances": [{"a": [1, 2], "b": 3}]}, PAIR)
    assert arrays["a"].shape == (1, 2) and arrays["b"].tolist() == [3.0]


@pytest.mark.parametrize(
    "value, dtype, expected",
    [
        (True, "bool", np.array(True)),
        ([1, -2], "int8", np.array([1, -2], np.int8)),
        ([[0.5], [2]], "float64", np.array([[0.5], [2.0]])),
        ("é", "string", np.array([b"\xc3\xa9"], object).reshape(())),
    ],
)
def test_json_values_take_the_signature_dtype(value, dtype, expected):
    array = json_to_array(value, dtype)
    assert array.dtype == expected.dtype and array.shape == expected.shape
    assert array.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "value, dtype, status, message",
    [
        (300, "int8", 400, "JSON Value: 300 Type: Number is not of expected type: int8"),  # no silent wrap-around
        (1.0, "int32", 400, "JSON Value: 1.0 Type: Number is not of expected type: int32"),
        (1, "bool", 400, "JSON Value: 1 Type: Number is not of expected type: bool"),
        (16777217, "float32", 400, "Cannot convert JSON value: 16777217 to float without loss of precision."),
        ([[1], 2], "float32", 400, "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
        ([1, [2]], "float32", 400, "Encountered list at unexpected level: 1 expected < 1"),
        ({"b64": "@@"}, "string", 400, "Unable to base64 decode"),
        (1.5, "float16", 501, "Conversion of JSON Value: 1.5 to type: half"),
    ],
)
def test_values_that_do_not_fit_are_refused_with_tf_servings_text(value, dtype, status, message):
    assert error_of(json_to_array, value, dtype) == (status, message)


def test_body_errors_name_the_problem():
    assert error_of(parse_json_body, b"[1]") == (400, "JSON Value: [1] Is not object")
    assert error_of(parse_json_body, b"\xff")[1].startswith("JSON Parse error:")
    assert error_of(request_arrays, {"instances": []}, TEXT)[1].endswith("No values in 'instances' array")
    assert error_of(request_arrays, {"inputs": {"a": [[1, 2, 3]], "b": [1]}}, PAIR) == (
        400,
        "Input: a has shape [1,3], but the signature expects shape [-1,2] (dtype float)",
    )
    long_text = "x" * 5000  # a huge value is cut short, not echoed back whole
    assert len(error_of(request_arrays, {"instances": long_text}, TEXT)[1]) < 400


def test_response_document_is_tf_serving_exact():
    outputs = {
        "p": np.array([[0.1, 1 / 3]], np.float32),
        "n": np.array([b"ok"], object),
        "k_bytes": np.array([b"\x00"], object),
        "flag": np.array([True]),
    }
    assert format_response(outputs, row_format=True) == (
        '{"predictions":[{"flag":true,"k_bytes":{"b64":"AA=="},"n":"ok","p":[0.1,0.333333343]}]}'
    )
    assert format_response({"v": np.array([2.0, np.nan], np.float64)}, row_format=False) == '{"outputs":[2.0,NaN]}'
    status, message = error_of(format_response, {"a": np.zeros(2), "b": np.zeros(3)}, True)
    assert status == 400 and "inconsistent batch size: 3 expecting: 2" in message


def test_limits_count_rows_before_conversion_and_bytes_after():
    assert requested_rows({"instances": ["a"] * 7}) == 7
    assert requested_rows({"inputs": {"a": [[1, 2]] * 5, "b": [1] * 5}}) == 5
    assert requested_rows({"inputs": ["a", "b"]}) == 2 and requested_rows({"inputs": "a"}) == 1
    limits = RequestLimits(max_instances=3, max_input_bytes=10)
    status, message = error_of(limits.check_rows, {"instances": ["a"] * 4})
    assert status == 413 and "4 instances" in message and "--max-instances" in message
    limits.check_rows({"instances": ["a"] * 3})
    status, message = error_of(limits.check_size, {"text": np.array([b"x" * 6, b"y" * 5], object)})
    assert status == 413 and "11 bytes" in message and "--max-input-bytes" in message
    limits.check_size({"a": np.zeros(2, np.float32)})  # 8 bytes
