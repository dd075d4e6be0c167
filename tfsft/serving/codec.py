"""TF Serving's REST JSON <-> numpy arrays, with TF Serving's acceptance rules, error texts and float format.

Requests: a parsed body plus each signature input's `InputSpec` (dtype name and shape, as TensorFlow
names them) become one numpy array per input (strings as object arrays of bytes). Responses: output
arrays become the exact document TF Serving writes. The request side mirrors
tensorflow_serving/util/json_tensor.cc.

TF-free on purpose: it needs only numpy, so it is tested on its own and loads fast.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass

import numpy as np

from tfsft.serving.errors import ServingError, invalid

DEFAULT_SIGNATURE = "serving_default"
_TF_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half"}  # DataTypeString() spelling
_INTEGER_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


@dataclass(frozen=True)
class InputSpec:
    """One signature input: TensorFlow's dtype name (`float32`, `string`, `int64`, ...) and its shape
    (None for unknown rank; None for each unknown dimension)."""

    dtype: str
    shape: tuple | None = None


def type_name(dtype: str) -> str:
    return _TF_TYPE_NAMES.get(dtype, dtype)


def show(value, limit: int = 200) -> str:
    """A JSON value for an error message, cut short so a huge request is not echoed back."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    names: dict[type, str] = {dict: "Object", list: "Array", str: "String"}
    return names.get(type(value), "Number")


def _type_error(value, dtype: str) -> ServingError:
    return invalid(f"JSON Value: {show(value)} Type: {_json_type(value)} is not of expected type: {type_name(dtype)}")


def _is_b64_object(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named_object(value) -> bool:
    return isinstance(value, dict) and not _is_b64_object(value)


# ======================================================================================= request body
def parse_json_body(raw: bytes) -> dict:
    if not raw or raw.isspace():
        raise invalid("JSON Parse error: The document is empty")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, or nested beyond reason
        raise invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(body, dict):
        raise invalid(f"JSON Value: {show(body)} Is not object")
    if not isinstance(body.get("signature_name", ""), str):
        raise invalid(f"JSON Value: {show(body)} not formatted correctly. 'signature_name' key must be a string value.")
    return body


def request_arrays(body: dict, specs: dict[str, InputSpec]) -> tuple[dict[str, np.ndarray], bool]:
    """(numpy input per signature input, whether the request used the row format), shape-checked."""
    if "instances" in body and "inputs" in body:
        raise invalid(
            f"JSON Value: {show(body)} Not formatted correctly expecting only one of "
            f"'inputs' or 'instances' keys to exist"
        )
    if "instances" in body:
        arrays, row_format = _arrays_from_instances(body, specs), True
    elif "inputs" in body:
        arrays, row_format = _arrays_from_inputs(body["inputs"], specs), False
    else:
        raise invalid("Missing 'inputs' or 'instances' key")
    for name, array in arrays.items():
        _check_shape(name, array, specs[name])
    return arrays, row_format


def _arrays_from_instances(body: dict, specs: dict[str, InputSpec]) -> dict[str, np.ndarray]:
    instances = body["instances"]
    if not isinstance(instances, list):
        raise invalid(f"JSON Value: {show(body)} Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid(f"JSON Value: {show(body)} No values in 'instances' array")
    names = sorted(specs)
    named = _is_named_object(instances[0])
    if not named and len(names) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    items: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if named != _is_named_object(instance):
            raise invalid(
                f"Expecting object but got list at item {index} of input list"
                if named
                else f"Expecting value/list but got object at item {index} of input list"
            )
        values = instance if named else {names[0]: instance}
        for key, value in values.items():
            _add_instance_item(index, key, value, specs, items)
        if named and set(instance) != set(names):
            raise invalid(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{show(instance)} keys must be equal to: {','.join(names)}"
            )
    return {name: np.stack(arrays) for name, arrays in items.items()}


def _add_instance_item(index: int, key: str, value, specs: dict[str, InputSpec], items: dict) -> None:
    def failure(message: str, status: int = 400) -> ServingError:
        return ServingError(
            status,
            f"Failed to process element: {index} key: {key} of 'instances' list. Error: INVALID_ARGUMENT: {message}",
        )

    if key not in specs:
        raise failure(f"JSON object: does not have named input: {key}")
    try:
        array = json_to_array(value, specs[key].dtype)
    except ServingError as exc:
        raise failure(exc.message, exc.status) from None
    if items[key]:  # every instance must give this input the same shape (they are stacked into a batch)
        first = items[key][0]
        if first.size != array.size:
            raise failure(f"Expecting tensor size: {first.size} but got: {array.size}")
        if first.shape != array.shape:
            raise failure(f"Expecting shape {shape_text(first.shape)} but got: {shape_text(array.shape)}")
    items[key].append(array)


def _arrays_from_inputs(inputs, specs: dict[str, InputSpec]) -> dict[str, np.ndarray]:
    names = sorted(specs)
    if not _is_named_object(inputs):
        if len(names) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        inputs = {names[0]: inputs}
    arrays = {}
    for name in names:  # like TF Serving, keys that are not inputs of the signature are ignored
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        try:
            arrays[name] = json_to_array(inputs[name], specs[name].dtype)
        except ServingError as exc:
            raise ServingError(
                exc.status,
                f"Failed to process input: {name} of 'inputs' object. Error: INVALID_ARGUMENT: {exc.message}",
            ) from None
    return arrays


def shape_text(shape) -> str:
    return "[" + ",".join(str(-1 if d is None else d) for d in shape) + "]"


def _check_shape(name: str, array: np.ndarray, spec: InputSpec) -> None:
    """TF Serving leaves this to the graph; checking up front gives a clear 400 instead of an op error."""
    if spec.shape is None:
        return
    dims = list(spec.shape)
    if array.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, array.shape)):
        raise invalid(
            f"Input: {name} has shape {shape_text(array.shape)}, but the signature expects shape "
            f"{shape_text(dims)} (dtype {type_name(spec.dtype)})"
        )


# ======================================================================================= JSON values -> array
def json_to_array(value, dtype: str) -> np.ndarray:
    """A JSON scalar or (nested, rectangular) list as a numpy array of the signature's dtype."""
    shape = _dense_shape(value)
    leaves: list = []
    _collect_leaves(value, shape, 0, leaves)
    return _leaves_to_array(leaves, dtype).reshape(shape)


def _dense_shape(value) -> list[int]:
    """The shape implied by the first element at each level (json_tensor.cc's GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _collect_leaves(value, shape: list[int], level: int, leaves: list) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid(
                f"JSON Value: {show(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}"
            )
        leaves.append(value)
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _collect_leaves(item, shape, level + 1, leaves)


def _leaves_to_array(leaves: list, dtype: str) -> np.ndarray:
    if dtype == "string":
        return object_array([_string_leaf(v, dtype) for v in leaves])
    if dtype in ("float32", "float64"):
        _check_decimals(leaves, dtype)
    elif dtype in _INTEGER_TYPES:
        # JSON 1.0 is a decimal, not an integer, as rapidjson's IsInt() sees it. Values outside the
        # dtype's range are refused (TF Serving would let int8/int16/uint8 values wrap around).
        limits = np.iinfo(dtype)
        for v in leaves:
            if not (isinstance(v, int) and not isinstance(v, bool) and limits.min <= v <= limits.max):
                raise _type_error(v, dtype)
    elif dtype == "bool":
        for v in leaves:
            if not isinstance(v, bool):
                raise _type_error(v, dtype)
    else:
        shown = show(leaves[0]) if leaves else "[]"
        raise ServingError(501, f"Conversion of JSON Value: {shown} to type: {type_name(dtype)}")
    return np.array(leaves, dtype=dtype)


def _string_leaf(value, dtype: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        return _decode_b64(value)
    raise _type_error(value, dtype)


def _decode_b64(value) -> bytes:
    if not _is_b64_object(value):
        raise invalid(f"JSON Value: {show(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:  # like absl::Base64Unescape, accept the standard alphabet with or without '=' padding
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def object_array(items: list) -> np.ndarray:
    """A 1-D object array; np.array() would try to look inside the items."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _check_decimals(leaves: list, dtype: str) -> None:
    """JSON numbers must fit the float type without loss (TF Serving's IsLosslessDecimal)."""
    info = np.finfo(dtype)
    max_int = (1 << (info.nmant + 1)) - 1  # largest integer the type holds exactly
    for v in leaves:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _type_error(v, dtype)
        if isinstance(v, int) and -(1 << 63) <= v < (1 << 64):
            lossless = abs(v) <= max_int
        else:
            try:
                number = float(v)
                lossless = not math.isfinite(number) or abs(number) <= float(info.max)
            except OverflowError:
                lossless = False
        if not lossless:
            raise invalid(f"Cannot convert JSON value: {show(v)} to {type_name(dtype)} without loss of precision.")


# ======================================================================================= arrays -> JSON response
def format_response(outputs: dict[str, np.ndarray], row_format: bool) -> str:
    """The response document as TF Serving writes it: `{"predictions": [...]}` or `{"outputs": ...}`."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    texts = {name: tensor_json_texts(name, np.asarray(array)) for name, array in sorted(outputs.items())}
    return _row_document(texts) if row_format else _columnar_document(texts)


def _row_document(texts: dict[str, np.ndarray]) -> str:
    batch_size: int | None = None
    for name, array in texts.items():  # every output must be batched like the input
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch_size is not None and array.shape[0] != batch_size:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch_size}")
        batch_size = array.shape[0]
    batch_size = batch_size or 0  # texts is never empty: format_response refuses an empty map
    if len(texts) == 1:
        (only,) = texts.values()
        rows = [_nest(only[i]) for i in range(batch_size)]
    else:
        rows = [
            "{" + ",".join(f"{json.dumps(name)}:{_nest(array[i])}" for name, array in texts.items()) + "}"
            for i in range(batch_size)
        ]
    return '{"predictions":[' + ",".join(rows) + "]}"


def _columnar_document(texts: dict[str, np.ndarray]) -> str:
    if len(texts) == 1:
        (only,) = texts.values()
        return '{"outputs":' + _nest(only) + "}"
    return '{"outputs":{' + ",".join(f"{json.dumps(name)}:{_nest(a)}" for name, a in texts.items()) + "}}"


def _nest(texts) -> str:
    """Nested JSON arrays from an array of element texts (or one element's text)."""
    if not isinstance(texts, np.ndarray):
        return str(texts)
    if texts.ndim == 0:
        return str(texts.item())
    if texts.ndim == 1:
        return "[" + ",".join(map(str, texts.tolist())) + "]"
    return "[" + ",".join(_nest(sub) for sub in texts) + "]"


def tensor_json_texts(name: str, array: np.ndarray) -> np.ndarray:
    """Each element of an output as JSON text, same shape as the array."""
    if array.dtype == object or array.dtype.kind == "S":
        as_bytes = name.endswith("_bytes")  # TF Serving's rule for binary string outputs
        return object_array([_string_json(v, as_bytes) for v in array.ravel().tolist()]).reshape(array.shape)
    if array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    if array.dtype.kind == "f":
        return _float_json(array)
    if array.dtype.kind == "b":
        return np.where(array, "true", "false")
    if array.dtype.kind in "iu":
        return array.astype(str)
    raise invalid(f"Failed to write JSON value for tensor type: {array.dtype.name}")


def _string_json(value: bytes, as_bytes: bool) -> str:
    if not as_bytes:
        try:
            return json.dumps(value.decode("utf-8"), ensure_ascii=False)
        except UnicodeDecodeError:
            pass  # TF Serving would write invalid JSON here; base64 keeps the document parseable
    return '{"b64":"' + base64.b64encode(value).decode("ascii") + '"}'


def _float_json(array: np.ndarray) -> np.ndarray:
    """Floats as TF Serving's WriteDecimal writes them.

    Six significant digits (`%g`) when that reads back as the same value, else full precision
    (`%.9g` float, `%.17g` double), so a float32 0.2 prints as 0.2 rather than 0.20000000298;
    whole numbers get a trailing `.0`; non-finite values are NaN, Infinity and -Infinity.
    """
    is_double = array.dtype == np.float64
    exact = array.astype(np.float64 if is_double else np.float32).ravel()  # float16 is written as float
    values = exact.astype(np.float64)
    short = np.char.mod("%g", values)
    full = np.char.mod("%.17g" if is_double else "%.9g", values)
    texts = np.where(short.astype(exact.dtype) == exact, short, full)
    whole = (np.char.find(texts, ".") < 0) & (np.char.find(texts, "e") < 0)
    texts = np.where(whole, np.char.add(texts, ".0"), texts)
    texts = np.where(np.isnan(values), "NaN", texts)
    texts = np.where(np.isinf(values), np.where(values > 0, "Infinity", "-Infinity"), texts)
    return texts.reshape(array.shape)
