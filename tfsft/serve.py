"""`python -m tfsft.serve --model-base-path saved_models` — TF Serving's REST API over exported models.

A client written for TensorFlow Serving works unchanged against it: the same URLs (`:predict`,
model status, `/metadata`, `/versions/N`, `/labels/L`), request formats (row `instances` and
columnar `inputs`, `{"b64": ...}` binary values, `signature_name`), response documents
(`predictions` / `outputs`, float formatting, `_bytes` outputs as base64) and error codes.

It loads SavedModels with TensorFlow alone (a SavedModel on disk is the only contract with
training), serves the latest version by default, picks up new versions without a restart, runs
TF Serving warm-up records, and keeps TensorFlow work in thread pools so the event loop never
blocks. `--batching` merges concurrent requests into one model call.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
from aiohttp import web

from tfsft.errors import TfsftError

log = logging.getLogger("tfsft.serve")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many warm-up records

PathLike = Union[str, Path]

# TF status codes (tf.errors.*, index = code) as TF Serving names them in model status documents,
# and the HTTP status TF Serving answers for each (tensorflow_serving/model_servers/http_server.cc).
_CODE_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
               "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
               "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
_HTTP_STATUS_OF_CODE = (200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401)


class ServingError(Exception):
    """An error answered to the client as `{"error": message}` with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ServeConfigError(TfsftError):
    """The model base path or models.config file cannot be used (reported at start-up, logged on reloads)."""


def _invalid(message: str) -> ServingError:
    return ServingError(400, message)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _tf_error_code(exc: BaseException) -> int:
    code = getattr(exc, "error_code", 2)  # tf.errors.OpError carries one; anything else is UNKNOWN
    return code if isinstance(code, int) and 0 <= code < len(_CODE_NAMES) else 2


# ======================================================================================= models on disk
@dataclass
class Servable:
    """One loaded version of one model: its signature functions and their input specs."""

    name: str
    version: int
    path: Path
    signatures: dict  # signature name -> callable taking keyword tensors, returning a dict of tensors
    input_specs: dict  # signature name -> {input name: tf.TensorSpec}
    signature_def_map: dict  # the SignatureDefMap as TF Serving prints it in /metadata
    loaded: object = None  # the tf.saved_model.load() object: owns the variables the functions use

    @classmethod
    def load(cls, name: str, version: int, path: Path) -> "Servable":
        import tensorflow as tf

        try:
            import tensorflow_text  # noqa: F401  (registers the ops of in-graph tokenizers)
        except ImportError:
            pass
        loaded = tf.saved_model.load(str(path))
        signatures = dict(loaded.signatures)
        specs = {sig: dict(fn.structured_input_signature[1]) for sig, fn in signatures.items()}
        servable = cls(name, version, path, signatures, specs, read_signature_def_map(path), loaded)
        servable.warm_up()
        return servable

    def warm_up(self) -> int:
        """Replay `assets.extra/tf_serving_warmup_requests` like TF Serving does: a failing record fails the load."""
        warmup = self.path / WARMUP_FILE
        if not warmup.is_file():
            return 0
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for record in tf.data.TFRecordDataset(str(warmup)).take(MAX_WARMUP_RECORDS):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if not entry.HasField("predict_log"):
                continue  # classify/regress records: this server only has the predict API
            request = entry.predict_log.request
            signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
            tensors = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
            self.signatures[signature](**tensors)
            count += 1
        return count


def read_signature_def_map(path: Path) -> dict:
    """The SavedModel's SignatureDefMap, converted exactly as TF Serving's /metadata does it.

    TF Serving prints with `always_print_primitive_fields` and `preserve_proto_field_names`, so
    defaults such as `"name": ""` and `"unknown_rank": false` are present and keys stay snake_case.
    """
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    meta_graphs = saved_model.meta_graphs  # TF Serving loads the graph tagged "serve"
    serving = next((graph for graph in meta_graphs if "serve" in graph.meta_info_def.tags), meta_graphs[0])
    signature_map = get_model_metadata_pb2.SignatureDefMap(signature_def=serving.signature_def)
    return json_format.MessageToDict(signature_map, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


def version_folders(model_dir: Path) -> dict[int, Path]:
    """Integer-named folders holding a saved_model.pb; `.tmp-*` folders of exports in progress don't count."""
    try:
        children = list(model_dir.iterdir())
    except OSError:  # missing, not a folder, or removed while we look
        return {}
    return {int(p.name): p for p in children
            if p.name.isascii() and p.name.isdigit() and (p / "saved_model.pb").is_file()}


@dataclass
class ModelSource:
    """Where one model's versions live, and which of them to serve (TF Serving's ModelConfig)."""

    name: str
    base_path: Path
    labels: dict[str, int] = field(default_factory=dict)
    specific_versions: Optional[frozenset[int]] = None  # model_version_policy { specific { versions: N } }
    latest_versions: Optional[int] = None  # model_version_policy { latest { num_versions: N } }

    def wanted_versions(self) -> dict[int, Path]:
        on_disk = version_folders(self.base_path)
        if self.specific_versions is not None:
            return {v: p for v, p in on_disk.items() if v in self.specific_versions}
        if self.latest_versions is not None:
            return {v: on_disk[v] for v in sorted(on_disk)[-self.latest_versions:]}
        return on_disk  # no policy: every version on disk stays available (old ones until deleted)


def read_model_config(path: Path) -> list[ModelSource]:
    """TF Serving's `--model_config_file`: a text-format ModelServerConfig with a model_config_list."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except OSError as exc:
        raise ServeConfigError(f"Cannot read the model config file '{path}': {exc.strerror}.") from None
    except text_format.ParseError as exc:
        raise ServeConfigError(f"The model config file '{path}' is not a valid TF Serving models.config "
                               f"(text-format ModelServerConfig): {exc}") from None
    sources = [_model_source(entry, path) for entry in config.model_config_list.config]
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ServeConfigError(f"The model config file '{path}' lists these models more than once: {duplicates}.")
    return sources


def _model_source(entry, config_path: Path) -> ModelSource:
    where = f"model config file '{config_path}'"
    if not entry.name or not entry.base_path:
        raise ServeConfigError(f"Every config {{ }} in the {where} needs a name and a base_path.")
    if entry.model_platform not in ("", "tensorflow"):
        raise ServeConfigError(f"Model '{entry.name}' in the {where} has model_platform "
                               f"'{entry.model_platform}'; only \"tensorflow\" SavedModels can be served.")
    base = Path(entry.base_path)
    if not base.is_absolute():  # relative to the config file, so a models.config travels with its folder
        base = (config_path.parent / base).resolve()
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    specific = frozenset(policy.specific.versions) if choice == "specific" else None
    latest = max(1, policy.latest.num_versions) if choice == "latest" else None
    return ModelSource(entry.name, base, dict(entry.version_labels), specific, latest)


@dataclass
class _LoadFailure:
    stamp: int  # mtime of saved_model.pb: a version is retried only once it has been rewritten
    code: int
    message: str


class ModelRegistry:
    """The served models: found under a base path (one folder per model) or listed in a models.config.

    `refresh()` runs off the event loop; it builds new dictionaries and swaps them in whole, so
    request handlers always read a consistent snapshot without locking.
    """

    def __init__(self, base_path: Optional[PathLike] = None, model_config_file: Optional[PathLike] = None):
        if (base_path is None) == (model_config_file is None):
            raise ValueError("give exactly one of base_path or model_config_file")
        self.base_path = Path(base_path) if base_path is not None else None
        self.model_config_file = Path(model_config_file) if model_config_file is not None else None
        self.models: dict[str, dict[int, Servable]] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self.failures: dict[str, dict[int, _LoadFailure]] = {}
        self._refresh_lock = threading.Lock()

    def sources(self) -> list[ModelSource]:
        if self.model_config_file is not None:
            return read_model_config(self.model_config_file)
        if version_folders(self.base_path):  # pointed at one model's folder, as with TF Serving's flag
            return [ModelSource(self.base_path.resolve().name, self.base_path)]
        try:
            children = sorted(p for p in self.base_path.iterdir() if p.is_dir())
        except OSError:
            return []
        return [ModelSource(p.name, p) for p in children if version_folders(p)]

    def refresh(self) -> list[str]:
        """Load versions that appeared on disk and drop those that disappeared; returns what changed."""
        with self._refresh_lock:
            sources = self.sources()
            models, failures, changes = {}, {}, []
            for source in sources:
                current = self.models.get(source.name, {})
                wanted = source.wanted_versions()
                models[source.name] = {v: s for v, s in current.items() if v in wanted}
                failures[source.name] = {}
                for version in sorted(set(wanted) - set(current)):
                    servable = self._load(source.name, version, wanted[version], failures[source.name])
                    if servable is not None:
                        models[source.name][version] = servable
                        changes.append(f"loaded {source.name} version {version} from {wanted[version]}")
                changes += [f"unloaded {source.name} version {v}" for v in sorted(set(current) - set(wanted))]
            changes += [f"unloaded {name} version {v}"
                        for name in sorted(set(self.models) - set(models)) for v in sorted(self.models[name])]
            self.models, self.failures = models, failures
            self.labels = {source.name: dict(source.labels) for source in sources}
            return changes

    def _load(self, name: str, version: int, path: Path, failures: dict) -> Optional[Servable]:
        try:
            stamp = (path / "saved_model.pb").stat().st_mtime_ns
        except OSError:
            return None  # removed since we listed it
        previous = self.failures.get(name, {}).get(version)
        if previous is not None and previous.stamp == stamp:
            failures[version] = previous  # still the same broken files: don't reload every poll
            return None
        try:
            return Servable.load(name, version, path)
        except Exception as exc:  # a broken export must not take the server (or its other models) down
            message = _first_line(exc)
            log.error("Cannot load %s version %s from %s: %s", name, version, path, message)
            failures[version] = _LoadFailure(stamp, _tf_error_code(exc), message)
            return None

    def resolve_label(self, name: str, label: str) -> int:
        labels = self.labels.get(name, {})
        if label not in labels:  # TF Serving answers INVALID_ARGUMENT (400) here, not NOT_FOUND
            raise _invalid(f"Unrecognized servable version label: {label}")
        return labels[label]

    def get(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
        """The servable a request names; the largest loaded version when neither version nor label is given."""
        versions = self.models.get(name, {})
        if label is not None:
            version = self.resolve_label(name, label)
        if version is None:
            if not versions:
                raise ServingError(404, f"Servable not found for request: Latest({name})")
            return versions[max(versions)]
        if version not in versions:
            raise ServingError(404, f"Servable not found for request: Specific({name}, {version})")
        return versions[version]

    def version_status(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> list[dict]:
        """`model_version_status` entries: loaded versions are AVAILABLE, failed loads END with their error."""
        if label is not None:
            version = self.resolve_label(name, label)
        loaded, failed = self.models.get(name, {}), self.failures.get(name, {})
        known = sorted(set(loaded) | set(failed), reverse=True)
        if version is not None:
            if version not in known:
                raise ServingError(404, f"Could not find version {version} of model {name}")
            known = [version]
        if not known:
            raise ServingError(404, f"Could not find any versions of model {name}")
        return [_status_entry(v, None if v in loaded else failed[v]) for v in known]


def _status_entry(version: int, failure: Optional[_LoadFailure]) -> dict:
    if failure is None:
        return {"version": str(version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    return {"version": str(version), "state": "END",
            "status": {"error_code": _CODE_NAMES[failure.code], "error_message": failure.message}}


# ======================================================================================= JSON request -> arrays
# Mirrors tensorflow_serving/util/json_tensor.cc: the same acceptance rules and error texts.
_TF_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half"}  # DataTypeString() spelling


def _type_name(dtype) -> str:
    return _TF_TYPE_NAMES.get(dtype.name, dtype.name)


def _show(value, limit: int = 200) -> str:
    """A JSON value for an error message, cut short so a huge request is not echoed back."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _type_error(value, dtype) -> ServingError:
    return _invalid(f"JSON Value: {_show(value)} Type: {_json_type(value)} "
                    f"is not of expected type: {_type_name(dtype)}")


def _is_b64_object(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named_object(value) -> bool:
    return isinstance(value, dict) and not _is_b64_object(value)


def parse_json_body(raw: bytes) -> dict:
    if not raw or raw.isspace():
        raise _invalid("JSON Parse error: The document is empty")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _invalid(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, or nested beyond reason
        raise _invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(body, dict):
        raise _invalid(f"JSON Value: {_show(body)} Is not object")
    if not isinstance(body.get("signature_name", ""), str):
        raise _invalid(f"JSON Value: {_show(body)} not formatted correctly. "
                       f"'signature_name' key must be a string value.")
    return body


def signature_inputs(servable: Servable, signature_name: str) -> dict:
    name = signature_name or DEFAULT_SIGNATURE
    if name not in servable.signatures:
        raise _invalid(f'Serving signature name: "{name}" not found in signature def')
    specs = servable.input_specs[name]
    if not specs:
        raise _invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    return specs


def request_arrays(body: dict, specs: dict) -> tuple[dict[str, np.ndarray], bool]:
    """(numpy input per signature input, whether the request used the row format), shape-checked."""
    if "instances" in body and "inputs" in body:
        raise _invalid(f"JSON Value: {_show(body)} Not formatted correctly expecting only one of "
                       f"'inputs' or 'instances' keys to exist")
    if "instances" in body:
        arrays, row_format = _arrays_from_instances(body, specs), True
    elif "inputs" in body:
        arrays, row_format = _arrays_from_inputs(body["inputs"], specs), False
    else:
        raise _invalid("Missing 'inputs' or 'instances' key")
    for name, array in arrays.items():
        _check_shape(name, array, specs[name])
    return arrays, row_format


def _arrays_from_instances(body: dict, specs: dict) -> dict[str, np.ndarray]:
    instances = body["instances"]
    if not isinstance(instances, list):
        raise _invalid(f"JSON Value: {_show(body)} Expecting 'instances' to be an list/array")
    if not instances:
        raise _invalid(f"JSON Value: {_show(body)} No values in 'instances' array")
    names = sorted(specs)
    named = _is_named_object(instances[0])
    if not named and len(names) > 1:
        raise _invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                       "required as per tensorinfo_map")
    items: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if named != _is_named_object(instance):
            raise _invalid(f"Expecting object but got list at item {index} of input list" if named
                           else f"Expecting value/list but got object at item {index} of input list")
        values = instance if named else {names[0]: instance}
        for key, value in values.items():
            _add_instance_item(index, key, value, specs, items)
        if named and set(instance) != set(names):
            raise _invalid(f"Failed to process element: {index} of 'instances' list. JSON object: "
                           f"{_show(instance)} keys must be equal to: {','.join(names)}")
    return {name: np.stack(arrays) for name, arrays in items.items()}


def _add_instance_item(index: int, key: str, value, specs: dict, items: dict) -> None:
    def failure(message: str, status: int = 400) -> ServingError:
        return ServingError(status, f"Failed to process element: {index} key: {key} of 'instances' list. "
                                    f"Error: INVALID_ARGUMENT: {message}")

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
            raise failure(f"Expecting shape {_shape_text(first.shape)} but got: {_shape_text(array.shape)}")
    items[key].append(array)


def _arrays_from_inputs(inputs, specs: dict) -> dict[str, np.ndarray]:
    names = sorted(specs)
    if not _is_named_object(inputs):
        if len(names) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                           "required as per tensorinfo_map")
        inputs = {names[0]: inputs}
    arrays = {}
    for name in names:  # like TF Serving, keys that are not inputs of the signature are ignored
        if name not in inputs:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
        try:
            arrays[name] = json_to_array(inputs[name], specs[name].dtype)
        except ServingError as exc:
            raise ServingError(exc.status, f"Failed to process input: {name} of 'inputs' object. "
                                           f"Error: INVALID_ARGUMENT: {exc.message}") from None
    return arrays


def _shape_text(shape) -> str:
    return "[" + ",".join(str(-1 if d is None else d) for d in shape) + "]"


def _check_shape(name: str, array: np.ndarray, spec) -> None:
    """TF Serving leaves this to the graph; checking up front gives a clear 400 instead of an op error."""
    expected = spec.shape
    if expected.rank is None:
        return
    dims = expected.as_list()
    if array.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, array.shape)):
        raise _invalid(f"Input: {name} has shape {_shape_text(array.shape)}, but the signature expects shape "
                       f"{_shape_text(dims)} (dtype {_type_name(spec.dtype)})")


def json_to_array(value, dtype) -> np.ndarray:
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
            raise _invalid(f"JSON Value: {_show(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                           f"Expected at level: {rank}")
        leaves.append(value)
        return
    if level >= rank:
        raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise _invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                       f"expected size: {shape[level]}")
    for item in value:
        _collect_leaves(item, shape, level + 1, leaves)


def _leaves_to_array(leaves: list, dtype) -> np.ndarray:
    import tensorflow as tf

    if dtype == tf.string:
        return _object_array([_string_leaf(v, dtype) for v in leaves])
    if dtype in (tf.float32, tf.float64):
        _check_decimals(leaves, dtype)
    elif dtype.is_integer:
        # JSON 1.0 is a decimal, not an integer, as rapidjson's IsInt() sees it. Values outside the
        # dtype's range are refused (TF Serving would let int8/int16/uint8 values wrap around).
        for v in leaves:
            if not (isinstance(v, int) and not isinstance(v, bool) and dtype.min <= v <= dtype.max):
                raise _type_error(v, dtype)
    elif dtype == tf.bool:
        for v in leaves:
            if not isinstance(v, bool):
                raise _type_error(v, dtype)
    else:
        shown = _show(leaves[0]) if leaves else "[]"
        raise ServingError(501, f"Conversion of JSON Value: {shown} to type: {_type_name(dtype)}")
    return np.array(leaves, dtype=dtype.as_numpy_dtype)


def _string_leaf(value, dtype) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        return _decode_b64(value)
    raise _type_error(value, dtype)


def _decode_b64(value) -> bytes:
    if not _is_b64_object(value):
        raise _invalid(f"JSON Value: {_show(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:  # like absl::Base64Unescape, accept the standard alphabet with or without '=' padding
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("Unable to base64 decode") from None


def _object_array(items: list) -> np.ndarray:
    """A 1-D object array; np.array() would try to look inside the items."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _check_decimals(leaves: list, dtype) -> None:
    """JSON numbers must fit the float type without loss (TF Serving's IsLosslessDecimal)."""
    info = np.finfo(dtype.as_numpy_dtype)
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
            raise _invalid(f"Cannot convert JSON value: {_show(v)} to {_type_name(dtype)} without loss of precision.")


# ======================================================================================= arrays -> JSON response
def format_response(outputs: dict[str, np.ndarray], row_format: bool) -> str:
    """The response document as TF Serving writes it: `{"predictions": [...]}` or `{"outputs": ...}`."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    texts = {name: tensor_json_texts(name, np.asarray(array)) for name, array in sorted(outputs.items())}
    return _row_document(texts) if row_format else _columnar_document(texts)


def _row_document(texts: dict[str, np.ndarray]) -> str:
    batch_size = None
    for name, array in texts.items():  # every output must be batched like the input
        if array.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if batch_size is not None and array.shape[0] != batch_size:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                           f"expecting: {batch_size}")
        batch_size = array.shape[0]
    if len(texts) == 1:
        (only,) = texts.values()
        rows = [_nest(only[i]) for i in range(batch_size)]
    else:
        rows = ["{" + ",".join(f"{json.dumps(name)}:{_nest(array[i])}" for name, array in texts.items()) + "}"
                for i in range(batch_size)]
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
        return _object_array([_string_json(v, as_bytes) for v in array.ravel().tolist()]).reshape(array.shape)
    if array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    if array.dtype.kind == "f":
        return _float_json(array)
    if array.dtype.kind == "b":
        return np.where(array, "true", "false")
    if array.dtype.kind in "iu":
        return array.astype(str)
    raise _invalid(f"Failed to write JSON value for tensor type: {array.dtype.name}")


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


# ======================================================================================= batching
@dataclass
class _Pending:
    arrays: dict
    future: asyncio.Future
    rows: int


class Batcher:
    """Merges concurrent predict requests for the same model version and signature into one call.

    Requests are grouped by model, version, signature and each input's dtype and non-batch shape,
    so their inputs always concatenate along axis 0. A group waits at most `timeout_ms` for more
    requests, runs up to `max_batch_size` rows at once and splits the outputs back. If the merged
    call fails, or its outputs are not per-row, each request runs alone so one bad request cannot
    fail the others.
    """

    def __init__(self, run, max_batch_size: int = 64, timeout_ms: float = 2.0):
        self._run = run  # async (servable, signature, arrays) -> outputs
        self.max_batch_size = max_batch_size
        self.timeout = timeout_ms / 1000.0
        self._pending: dict[tuple, list[_Pending]] = {}
        self._full: dict[tuple, asyncio.Event] = {}
        self._drainers: dict[tuple, asyncio.Task] = {}

    @staticmethod
    def can_batch(arrays: dict[str, np.ndarray]) -> bool:
        """TF Serving's batching rules: every input has a batch dimension, all of the same size."""
        sizes = {a.shape[0] if a.ndim else None for a in arrays.values()}
        return len(sizes) == 1 and None not in sizes

    async def submit(self, servable: Servable, signature: str, arrays: dict[str, np.ndarray]) -> dict:
        layout = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(arrays.items()))
        key = (servable.name, servable.version, signature, layout)
        pending = _Pending(arrays, asyncio.get_running_loop().create_future(), next(iter(arrays.values())).shape[0])
        queue = self._pending.setdefault(key, [])
        queue.append(pending)
        if sum(p.rows for p in queue) >= self.max_batch_size:
            self._full.setdefault(key, asyncio.Event()).set()
        if key not in self._drainers:
            self._drainers[key] = asyncio.create_task(self._drain(key, servable, signature))
        return await pending.future

    async def _drain(self, key: tuple, servable: Servable, signature: str) -> None:
        try:
            while self._pending.get(key):
                await self._wait_for_more(key)
                await self._run_batch(servable, signature, self._take(key))
        finally:
            self._drainers.pop(key, None)
            self._full.pop(key, None)
            for pending in self._pending.pop(key, []):  # only left behind if this task was cancelled
                if not pending.future.done():
                    pending.future.cancel()

    async def _wait_for_more(self, key: tuple) -> None:
        full = self._full.setdefault(key, asyncio.Event())
        if sum(p.rows for p in self._pending[key]) < self.max_batch_size:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(full.wait(), self.timeout)
        full.clear()

    def _take(self, key: tuple) -> list[_Pending]:
        queue, batch, rows = self._pending[key], [], 0
        while queue and (not batch or rows + queue[0].rows <= self.max_batch_size):
            pending = queue.pop(0)
            if not pending.future.done():  # the client has gone away
                batch.append(pending)
                rows += pending.rows
        return batch

    async def _run_batch(self, servable: Servable, signature: str, batch: list[_Pending]) -> None:
        if len(batch) <= 1:
            await asyncio.gather(*(self._run_alone(servable, signature, p) for p in batch))
            return
        merged = {name: np.concatenate([p.arrays[name] for p in batch]) for name in batch[0].arrays}
        try:
            parts = _split_outputs(await self._run(servable, signature, merged), [p.rows for p in batch])
        except Exception:
            parts = None
        if parts is None:
            await asyncio.gather(*(self._run_alone(servable, signature, p) for p in batch))
            return
        for pending, part in zip(batch, parts):
            if not pending.future.done():
                pending.future.set_result(part)

    async def _run_alone(self, servable: Servable, signature: str, pending: _Pending) -> None:
        try:
            result = await self._run(servable, signature, pending.arrays)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(result)


def _split_outputs(outputs: dict, sizes: list[int]) -> Optional[list[dict]]:
    total = sum(sizes)
    if any(np.ndim(v) == 0 or len(v) != total for v in outputs.values()):
        return None
    bounds = np.cumsum([0] + sizes)
    return [{name: value[start:stop] for name, value in outputs.items()}
            for start, stop in zip(bounds[:-1], bounds[1:])]


# ======================================================================================= model calls
_TF_NOISE = re.compile(r"^Graph execution error:\s*Detected at node [^\n]*? defined at \(most recent call last\):\n"
                       r"(?:<stack traces unavailable>\n|(?:[ \t][^\n]*\n)*)")


def _clean_tf_message(message: str) -> str:
    """TF's error text without the eager wrapper and Python frames it adds (never a trace to clients)."""
    message = _TF_NOISE.sub("", message)
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message).strip()


def call_signature(servable: Servable, signature: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one signature on numpy inputs (in a worker thread); TF errors become ServingErrors."""
    import tensorflow as tf

    specs = servable.input_specs[signature]
    tensors = {name: tf.constant(array, dtype=specs[name].dtype) for name, array in arrays.items()}
    try:
        outputs = servable.signatures[signature](**tensors)
    except tf.errors.OpError as exc:
        raise ServingError(_HTTP_STATUS_OF_CODE[_tf_error_code(exc)], _clean_tf_message(exc.message)) from None
    except (TypeError, ValueError) as exc:  # the signature wrapper refusing its arguments
        raise _invalid(_first_line(exc)) from None
    return {name: value.numpy() for name, value in outputs.items()}


# ======================================================================================= HTTP
REGISTRY_KEY = web.AppKey("registry", ModelRegistry)
INLINE_JSON_BYTES = 16 * 1024  # request bodies up to this size are parsed on the event loop
INLINE_OUTPUT_VALUES = 4096  # responses with up to this many output values are formatted on the event loop


def _error_response(status: int, message: str, headers: Optional[dict] = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class RestApi:
    """The request handlers; TensorFlow and heavy JSON work go to thread pools, never the event loop."""

    def __init__(self, registry: ModelRegistry, max_body_bytes: int, batching: Optional[dict],
                 poll_seconds: float, workers: Optional[int]):
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.poll_seconds = poll_seconds
        # TF parallelises inside each op already, so a few request threads are enough; model loading
        # gets its own thread so a slow load never holds up inference.
        self.workers = ThreadPoolExecutor(max_workers=workers or max(2, min(4, os.cpu_count() or 2)),
                                          thread_name_prefix="tfsft-serve")
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfsft-load")
        self.batcher = Batcher(self._call, **batching) if batching is not None else None

    async def _offload(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.workers, fn, *args)

    async def _call(self, servable: Servable, signature: str, arrays: dict) -> dict:
        return await self._offload(call_signature, servable, signature, arrays)

    @staticmethod
    def _model_spec(request: web.Request) -> tuple[str, Optional[int], Optional[str]]:
        """(model name, version, label) from the URL; the routes only let digits through as a version."""
        match = request.match_info
        version = int(match["version"]) if "version" in match else None
        return match["name"], version, match.get("label")

    async def _cpu(self, small: bool, fn, *args):
        # A thread hop costs more than parsing or formatting a small request; only big ones leave the loop.
        return fn(*args) if small else await self._offload(fn, *args)

    async def predict(self, request: web.Request) -> web.Response:
        raw = await request.read()
        small = len(raw) <= INLINE_JSON_BYTES
        body = await self._cpu(small, parse_json_body, raw)  # JSON first, then the model: TF Serving's order
        servable = self.registry.get(*self._model_spec(request))
        signature = body.get("signature_name") or DEFAULT_SIGNATURE
        specs = signature_inputs(servable, signature)
        arrays, row_format = await self._cpu(small, request_arrays, body, specs)
        if self.batcher is not None and Batcher.can_batch(arrays):
            outputs = await self.batcher.submit(servable, signature, arrays)
        else:
            outputs = await self._call(servable, signature, arrays)
        small_output = sum(np.asarray(v).size for v in outputs.values()) <= INLINE_OUTPUT_VALUES
        text = await self._cpu(small_output, format_response, outputs, row_format)
        return web.Response(text=text, content_type="application/json")

    async def status(self, request: web.Request) -> web.Response:
        statuses = self.registry.version_status(*self._model_spec(request))
        return web.json_response({"model_version_status": statuses})

    async def metadata(self, request: web.Request) -> web.Response:
        servable = self.registry.get(*self._model_spec(request))
        return web.json_response({
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": servable.signature_def_map},
        })

    @web.middleware
    async def errors_as_json(self, request: web.Request, handler) -> web.StreamResponse:
        """Every failure answers `{"error": ...}` like TF Serving; details of the unexpected stay in the log."""
        try:
            return await handler(request)
        except ServingError as exc:
            return _error_response(exc.status, exc.message)
        except web.HTTPRequestEntityTooLarge:
            return _error_response(413, f"Request body is larger than {self.max_body_bytes} bytes "
                                        f"(the server's --max-body-bytes limit)")
        except web.HTTPMethodNotAllowed as exc:
            return _error_response(405, f"Malformed request: {request.method} {request.path}",
                                   {"Allow": ", ".join(sorted(exc.allowed_methods))})
        except web.HTTPNotFound:  # TF Serving: 400 for unknown /v1/ paths, plain 404 elsewhere
            status = 400 if request.path.lower().startswith("/v1/") else 404
            return _error_response(status, f"Malformed request: {request.method} {request.path}")
        except web.HTTPException as exc:
            return _error_response(exc.status, exc.reason)
        except Exception:
            log.exception("Unexpected error answering %s %s", request.method, request.path)
            return _error_response(500, "Internal server error; the server log has the details")

    async def poll_models(self, app: web.Application):
        """Cleanup context: look for new and removed versions every poll_seconds while the app runs."""
        async def poll_forever():
            loop, last_error = asyncio.get_running_loop(), None
            while True:
                await asyncio.sleep(self.poll_seconds)
                try:
                    for change in await loop.run_in_executor(self.loader, self.registry.refresh):
                        log.info(change)
                    last_error = None
                except Exception as exc:  # e.g. a models.config being edited: keep serving what is loaded
                    if str(exc) != last_error:  # once per distinct problem, not every poll
                        log.error("Looking for model changes failed; still serving what is loaded: %s", exc)
                    last_error = str(exc)

        task = asyncio.create_task(poll_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def shutdown(self, app: web.Application) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.loader.shutdown(wait=False, cancel_futures=True)


def make_app(registry: ModelRegistry, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
             batching: Optional[Union[dict, bool]] = None, poll_seconds: float = 0.0,
             workers: Optional[int] = None) -> web.Application:
    """The aiohttp application serving `registry`.

    batching: None/False for none, True for defaults, or {"max_batch_size": N, "timeout_ms": T}.
    poll_seconds: > 0 to refresh the registry in the background (new versions without restart).
    """
    if batching is True:
        batching = {}
    elif batching is False:
        batching = None
    api = RestApi(registry, max_body_bytes, batching, poll_seconds, workers)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[api.errors_as_json])
    model = "/v1/models/{name:[^/:]+}"
    for suffix in ("", r"/versions/{version:\d+}", "/labels/{label:[^/:]+}"):
        app.router.add_post(model + suffix + ":predict", api.predict)
        app.router.add_get(model + suffix, api.status)
        app.router.add_get(model + suffix + "/metadata", api.metadata)
    if poll_seconds > 0:
        app.cleanup_ctx.append(api.poll_models)
    app.on_cleanup.append(api.shutdown)
    app[REGISTRY_KEY] = registry
    return app


# ======================================================================================= command line
def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfsft.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-base-path", help="folder of models laid out <name>/<version>/saved_model.pb "
                                                  "(default: saved_models)")
    source.add_argument("--model-config-file", help="TF Serving models.config (text format); relative base_path "
                                                    "values are relative to the file's folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (default 8501, as TF Serving)")
    parser.add_argument("--max-body-bytes", type=_positive(int), default=DEFAULT_MAX_BODY_BYTES,
                        help="larger request bodies get 413 (default 64 MiB)")
    parser.add_argument("--poll-seconds", type=float, default=2.0,
                        help="how often to look for new or removed versions; 0 turns it off (default 2)")
    parser.add_argument("--access-log", action="store_true", help="log every request (off by default, as in TF "
                        "Serving: a line per request costs throughput)")
    parser.add_argument("--batching", action="store_true", help="merge concurrent predict requests into one call")
    parser.add_argument("--max-batch-size", type=_positive(int), default=64, help="rows per merged call (default 64)")
    parser.add_argument("--batch-timeout-ms", type=_positive(float), default=2.0,
                        help="how long a request waits for others to merge with (default 2)")
    return parser


def _registry_from_args(args) -> ModelRegistry:
    if args.model_config_file:
        config = Path(args.model_config_file)
        if not config.is_file():
            raise ServeConfigError(f"The model config file '{config}' does not exist. Pass the models.config "
                                   f"that python -m tfsft.export writes next to the models, or use --model-base-path.")
        return ModelRegistry(model_config_file=config)
    base = Path(args.model_base_path or "saved_models")
    if not base.is_dir():
        raise ServeConfigError(f"The model base path '{base}' is not a folder. Pass --model-base-path with "
                               f"models exported as <name>/<version>/saved_model.pb (python -m tfsft.export).")
    return ModelRegistry(base_path=base)


class _Interrupted(TfsftError):
    exit_code = 130


def _serve(args) -> None:
    registry = _registry_from_args(args)
    try:
        changes = registry.refresh()
    except KeyboardInterrupt:  # Ctrl-C while loading; once serving, run_app handles it and exits cleanly
        raise _Interrupted("interrupted while loading models.") from None
    for change in changes:
        log.info(change)
    if not any(registry.models.values()):
        where = args.model_config_file or args.model_base_path or "saved_models"
        failed = sum(len(f) for f in registry.failures.values())
        reason = (f"{failed} version(s) failed to load (see the errors above)" if failed
                  else "no <name>/<version>/saved_model.pb folders were found")
        raise ServeConfigError(f"No model to serve from '{where}': {reason}. "
                               f"Export one with python -m tfsft.export, then start the server again.")
    batching = {"max_batch_size": args.max_batch_size, "timeout_ms": args.batch_timeout_ms} if args.batching else None
    app = make_app(registry, args.max_body_bytes, batching, args.poll_seconds)
    try:
        web.run_app(app, host=args.host, port=args.port, print=lambda message: log.info(message.strip()),
                    access_log=logging.getLogger("aiohttp.access") if args.access_log else None)
    except OSError as exc:
        raise ServeConfigError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. Another server "
                               f"may be using the port; pick a free one with --port.") from None


def main(argv=None) -> int:
    from tfsft.cli import quiet_tensorflow, run_main, setup_logging

    args = _parser().parse_args(argv)
    quiet_tensorflow()  # before TensorFlow is first imported (lazily, by the registry)
    setup_logging()
    return run_main(lambda: _serve(args))


if __name__ == "__main__":
    sys.exit(main())
