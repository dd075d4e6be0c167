"""`python -m tfsft.serve --model-base-path saved_models` — TF Serving's REST API over exported models.

A client written for TensorFlow Serving works unchanged against it: the same URLs, request formats
(row `instances` and columnar `inputs`, `{"b64": ...}` binary values, `signature_name`), response
shapes (`predictions` / `outputs`), status and metadata documents, and error codes. It loads
SavedModels with TensorFlow alone (a SavedModel on disk is the only contract with training), serves
the latest version, picks up new versions without a restart, and runs inference in a thread pool so
the event loop never blocks. Optional server-side batching merges concurrent requests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger("tfsft.serve")

DEFAULT_MAX_BODY = 64 * 1024 * 1024


class ServingError(Exception):
    """An error answered to the client as `{"error": message}` with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------------------- models
@dataclass
class Servable:
    name: str
    version: int
    path: Path
    loaded: object
    signatures: dict
    metadata: dict
    specs: dict = field(default_factory=dict)  # signature -> {input name: TensorSpec}, read once at load

    @classmethod
    def load(cls, name: str, version: int, path: Path) -> "Servable":
        import tensorflow as tf

        try:
            import tensorflow_text  # noqa: F401  (ops used by in-graph tokenizers)
        except ImportError:
            pass
        loaded = tf.saved_model.load(str(path))
        signatures = dict(loaded.signatures)
        specs = {name: dict(fn.structured_input_signature[1]) for name, fn in signatures.items()}
        return cls(name, version, path, loaded, signatures, signature_def_map(path), specs)


def signature_def_map(path: Path) -> dict:
    """The SignatureDefMap of the SavedModel as TF Serving prints it in /metadata (proto field names)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    meta_graph = saved_model.meta_graphs[0]
    signature_map = get_model_metadata_pb2.SignatureDefMap(signature_def=meta_graph.signature_def)
    return json_format.MessageToDict(signature_map, preserving_proto_field_name=True)


def version_folders(base: Path) -> dict[int, Path]:
    """Integer-named version folders holding a SavedModel; temp folders of exports in progress are skipped."""
    if not base.is_dir():
        return {}
    return {int(p.name): p for p in base.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").exists()}


@dataclass
class ModelSource:
    name: str
    base_path: Path
    specific_versions: Optional[set[int]] = None
    labels: dict[str, int] = field(default_factory=dict)


def read_model_config(path: Path) -> list[ModelSource]:
    """TF Serving's `--model_config_file` (text-format ModelServerConfig)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except (text_format.ParseError, OSError) as exc:
        raise ServingError(400, f"Cannot read model config file '{path}': {exc}") from None
    sources = []
    for entry in config.model_config_list.config:
        base = Path(entry.base_path)
        if not base.is_absolute():
            base = (path.parent / base).resolve()
        policy = entry.model_version_policy
        specific = set(policy.specific.versions) if policy.HasField("specific") else None
        sources.append(ModelSource(entry.name, base, specific, dict(entry.version_labels)))
    return sources


class ModelRegistry:
    """Models found under a base path (one folder per model) or listed in a models.config file."""

    def __init__(self, base_path: Optional[str | Path] = None, model_config_file: Optional[str | Path] = None):
        if (base_path is None) == (model_config_file is None):
            raise ValueError("give exactly one of base_path or model_config_file")
        self.base_path = Path(base_path) if base_path else None
        self.model_config_file = Path(model_config_file) if model_config_file else None
        self.models: dict[str, dict[int, Servable]] = {}
        self.labels: dict[str, dict[str, int]] = {}

    def sources(self) -> list[ModelSource]:
        if self.model_config_file:
            return read_model_config(self.model_config_file)
        return [ModelSource(p.name, p) for p in sorted(self.base_path.iterdir()) if p.is_dir() and version_folders(p)]

    def refresh(self) -> list[str]:
        """Load new versions, forget removed ones; returns what changed."""
        changes = []
        seen_models = set()
        for source in self.sources():
            seen_models.add(source.name)
            self.labels[source.name] = source.labels
            loaded = self.models.setdefault(source.name, {})
            on_disk = version_folders(source.base_path)
            if source.specific_versions is not None:
                on_disk = {v: p for v, p in on_disk.items() if v in source.specific_versions}
            for version in sorted(set(on_disk) - set(loaded)):
                try:
                    loaded[version] = Servable.load(source.name, version, on_disk[version])
                    changes.append(f"loaded {source.name} v{version}")
                except Exception as exc:  # a broken export must not take the server down
                    log.error("Cannot load %s version %s from %s: %s", source.name, version, on_disk[version], exc)
            for version in sorted(set(loaded) - set(on_disk)):
                del loaded[version]
                changes.append(f"unloaded {source.name} v{version}")
        for name in set(self.models) - seen_models:
            del self.models[name]
            changes.append(f"unloaded {name}")
        return changes

    def get(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
        versions = self.models.get(name)
        if not versions:
            raise ServingError(404, f"Servable not found for request: Latest({name})")
        if label is not None:
            if label not in self.labels.get(name, {}):
                raise ServingError(404, f"Unrecognized servable version label: {label}")
            version = self.labels[name][label]
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise ServingError(404, f"Servable not found for request: Specific({name}, {version})")
        return versions[version]


# ----------------------------------------------------------------------------------------- JSON <-> tensors
def _decode_b64(value):
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise ServingError(400, "Unable to base64 decode") from None
        raise ServingError(400, f"JSON object {json.dumps(value)[:80]} is not a tensor value; "
                                f"only {{\"b64\": ...}} objects are allowed inside tensor values")
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _leaves(value):
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def to_tensor(name: str, value, spec):
    import tensorflow as tf

    value = _decode_b64(value)
    if spec.dtype == tf.string:
        if not all(isinstance(v, (str, bytes)) for v in _leaves(value)):
            raise ServingError(400, f"Input '{name}' expects strings (DT_STRING), got a non-string value")
        value = _encode_strings(value)
        array = np.array(value, dtype=object)
    else:
        if any(isinstance(v, (str, bytes, bool)) and spec.dtype != tf.bool for v in _leaves(value)):
            raise ServingError(400, f"Input '{name}' expects numbers ({spec.dtype.name}), got a string")
        try:
            array = np.array(value, dtype=spec.dtype.as_numpy_dtype)
        except (TypeError, ValueError) as exc:
            raise ServingError(400, f"Input '{name}' cannot be read as {spec.dtype.name}: {exc}") from None
    if array.dtype == object and array.ndim == 0 and isinstance(value, list):
        raise ServingError(400, f"Input '{name}' has ragged (non-rectangular) values")
    expected = spec.shape
    if expected.rank is not None:
        compatible = array.ndim == expected.rank and all(
            d is None or d == s for d, s in zip(expected.as_list(), array.shape))
        if not compatible:
            raise ServingError(400, f"Input '{name}' has shape {list(array.shape)}, the signature expects "
                                    f"{[-1 if d is None else d for d in expected.as_list()]}")
    return tf.constant(array, dtype=spec.dtype)


def _encode_strings(value):
    if isinstance(value, list):
        return [_encode_strings(v) for v in value]
    return value.encode("utf-8") if isinstance(value, str) else value


def parse_request(body, specs: dict) -> tuple[dict, bool]:
    """(input tensors, whether the request used the row format)."""
    if not isinstance(body, dict):
        raise ServingError(400, "JSON value must be an object with 'instances' or 'inputs'")
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(400, "Missing 'instances' or 'inputs' key" if "instances" not in body
                           else "Only one of 'instances' or 'inputs' can be specified")
    names = list(specs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError(400, "'instances' must be a non-empty list")
        named = all(isinstance(i, dict) and "b64" not in i for i in instances)
        if len(names) == 1 and not named:
            columns = {names[0]: instances}
        elif named:
            columns = {}
            for name in names:
                if any(name not in i for i in instances):
                    raise ServingError(400, f"Missing input '{name}' in an instance")
                columns[name] = [i[name] for i in instances]
            unknown = {k for i in instances for k in i} - set(names)
            if unknown:
                raise ServingError(400, f"Unknown input(s) {sorted(unknown)}; the signature takes {names}")
        else:
            raise ServingError(400, f"Instances must be objects keyed by input name {names}")
        return {name: to_tensor(name, columns[name], specs[name]) for name in names}, True
    inputs = body["inputs"]
    if isinstance(inputs, dict) and not (set(inputs) == {"b64"}):
        unknown = set(inputs) - set(names)
        if unknown:
            raise ServingError(400, f"Unknown input(s) {sorted(unknown)}; the signature takes {names}")
        missing = set(names) - set(inputs)
        if missing:
            raise ServingError(400, f"Missing input(s) {sorted(missing)}")
        return {name: to_tensor(name, inputs[name], specs[name]) for name in names}, False
    if len(names) != 1:
        raise ServingError(400, f"'inputs' must be an object keyed by input name {names}")
    return {names[0]: to_tensor(names[0], inputs, specs[names[0]])}, False


def _jsonable(name: str, array: np.ndarray):
    if array.dtype == object or array.dtype.kind == "S":
        def convert(value):
            if isinstance(value, list):
                return [convert(v) for v in value]
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(value).decode("ascii")}
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(value).decode("ascii")}
        return convert(array.tolist())
    return array.tolist()


def format_response(outputs: dict, row_format: bool) -> dict:
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    if row_format:
        batch = {len(a) for a in arrays.values() if a.ndim > 0}
        if len(batch) != 1:
            raise ServingError(400, "Outputs have different batch sizes; use the columnar 'inputs' format")
        if len(arrays) == 1:
            (name, array), = arrays.items()
            return {"predictions": _jsonable(name, array)}
        n = batch.pop()
        columns = {name: _jsonable(name, array) for name, array in arrays.items()}
        return {"predictions": [{name: columns[name][i] for name in sorted(columns)} for i in range(n)]}
    if len(arrays) == 1:
        (name, array), = arrays.items()
        return {"outputs": _jsonable(name, array)}
    return {"outputs": {name: _jsonable(name, array) for name, array in sorted(arrays.items())}}


# ----------------------------------------------------------------------------------------- batching
class Batcher:
    """Merges concurrent requests for the same servable and signature into one call."""

    def __init__(self, run, max_batch_size: int = 64, timeout_ms: float = 2.0):
        self.run = run
        self.max_batch_size = max_batch_size
        self.timeout = timeout_ms / 1000.0
        self.queues: dict[tuple, asyncio.Queue] = {}
        self.workers: dict[tuple, asyncio.Task] = {}

    async def submit(self, servable: Servable, signature: str, tensors: dict) -> dict:
        key = (servable.name, servable.version, signature)
        if key not in self.queues:
            self.queues[key] = asyncio.Queue()
            self.workers[key] = asyncio.create_task(self._work(servable, signature, self.queues[key]))
        future = asyncio.get_running_loop().create_future()
        await self.queues[key].put((tensors, future))
        return await future

    async def _work(self, servable, signature, queue: asyncio.Queue):
        import tensorflow as tf

        while True:
            items = [await queue.get()]
            size = _batch_size(items[0][0])
            deadline = time.monotonic() + self.timeout
            while size < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                items.append(item)
                size += _batch_size(item[0])
            sizes = [_batch_size(t) for t, _ in items]
            merged = {name: tf.concat([t[name] for t, _ in items], axis=0) for name in items[0][0]}
            try:
                outputs = await self.run(servable, signature, merged)
            except Exception as exc:
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for (_, future), n in zip(items, sizes):
                if not future.done():
                    future.set_result({k: v[start:start + n] for k, v in outputs.items()})
                start += n


def _batch_size(tensors: dict) -> int:
    return int(next(iter(tensors.values())).shape[0])


# ----------------------------------------------------------------------------------------- HTTP
def error_response(status: int, message: str):
    from aiohttp import web

    return web.json_response({"error": message}, status=status)


def make_app(registry: ModelRegistry, max_body_bytes: int = DEFAULT_MAX_BODY, batching: Optional[dict] = None,
             poll_seconds: float = 0.0, workers: Optional[int] = None):
    from aiohttp import web

    executor = ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2))

    async def run_signature(servable: Servable, signature: str, tensors: dict) -> dict:
        def call():
            outputs = servable.signatures[signature](**tensors)
            return {k: v.numpy() for k, v in outputs.items()}
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    batcher = Batcher(run_signature, **batching) if batching else None

    @web.middleware
    async def json_errors(request, handler):
        try:
            return await handler(request)
        except ServingError as exc:
            return error_response(exc.status, exc.message)
        except web.HTTPException as exc:  # 404 route, 405 method, 413 body size: still TF Serving's JSON shape
            return error_response(exc.status, exc.reason)
        except Exception as exc:
            import tensorflow as tf

            if isinstance(exc, tf.errors.InvalidArgumentError):
                return error_response(400, exc.message.splitlines()[0])
            log.exception("Unexpected error for %s %s", request.method, request.path)
            return error_response(500, f"Internal error: {type(exc).__name__}")

    def lookup(request) -> Servable:
        version = request.match_info.get("version")
        if version is not None and not version.isdigit():
            raise ServingError(400, f"Version must be an integer, got '{version}'")
        return registry.get(request.match_info["name"], int(version) if version else None,
                            request.match_info.get("label"))

    async def predict(request):
        servable = lookup(request)
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ServingError(400, f"JSON Parse error: {exc.msg if hasattr(exc, 'msg') else exc}") from None
        signature = (body.get("signature_name") if isinstance(body, dict) else None) or "serving_default"
        if signature not in servable.signatures:
            raise ServingError(400, f"Serving signature name: \"{signature}\" not found in signature def")
        tensors, row_format = parse_request(body, servable.specs[signature])
        if batcher is not None and all(t.shape.rank for t in tensors.values()):
            outputs = await batcher.submit(servable, signature, tensors)
        else:
            outputs = await run_signature(servable, signature, tensors)
        return web.json_response(format_response(outputs, row_format), dumps=_dumps)

    def status_of(servable: Servable) -> dict:
        return {"version": str(servable.version), "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""}}

    async def status(request):
        name = request.match_info["name"]
        if request.match_info.get("version") or request.match_info.get("label"):
            servables = [lookup(request)]
        else:
            registry.get(name)  # 404 if unknown
            servables = [registry.models[name][v] for v in sorted(registry.models[name], reverse=True)]
        return web.json_response({"model_version_status": [status_of(s) for s in servables]})

    async def metadata(request):
        servable = lookup(request)
        return web.json_response({
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": servable.metadata},
        })

    async def poll(app):
        async def loop():
            while True:
                await asyncio.sleep(poll_seconds)
                try:
                    changes = await asyncio.get_running_loop().run_in_executor(executor, registry.refresh)
                    for change in changes:
                        log.info(change)
                except Exception:  # keep serving what is loaded
                    log.exception("Refreshing models failed")
        task = asyncio.create_task(loop())
        yield
        task.cancel()

    app = web.Application(client_max_size=max_body_bytes, middlewares=[json_errors])
    model = r"/v1/models/{name:[^/:]+}"
    for suffix in ("", r"/versions/{version:[^/:]+}", r"/labels/{label:[^/:]+}"):
        app.router.add_post(model + suffix + ":predict", predict)
        app.router.add_get(model + suffix, status)
        app.router.add_get(model + suffix + "/metadata", metadata)
    if poll_seconds > 0:
        app.cleanup_ctx.append(poll)
    app["registry"] = registry
    return app


def _dumps(data) -> str:
    # TF Serving writes non-finite floats as NaN / Infinity / -Infinity, which json.dumps also does.
    return json.dumps(data, allow_nan=True)


def main(argv=None) -> int:
    from tfsft.cli import quiet_tensorflow, run_main, setup_logging
    from tfsft.errors import TfsftError

    parser = argparse.ArgumentParser(prog="python -m tfsft.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-base-path", help="Folder of models: <base>/<name>/<version>/ (default saved_models)")
    source.add_argument("--model-config-file", help="TF Serving models.config (text format)")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (TF Serving's default 8501)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY)
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="How often to look for new versions")
    parser.add_argument("--batching", action="store_true", help="Merge concurrent requests into one call")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    quiet_tensorflow()
    setup_logging()

    def run():
        from aiohttp import web

        base = args.model_base_path or (None if args.model_config_file else "saved_models")
        location = Path(base or args.model_config_file)
        if not location.exists():
            raise TfsftError(f"'{location}' does not exist. Pass --model-base-path with exported models "
                             f"(python -m tfsft.export --run RUN) or --model-config-file.")
        registry = ModelRegistry(base, args.model_config_file)
        try:
            changes = registry.refresh()
        except ServingError as exc:
            raise TfsftError(exc.message) from None
        if not registry.models:
            raise TfsftError(f"No models found in '{location}': it needs <name>/<version>/saved_model.pb folders. "
                             f"Export one with python -m tfsft.export --run RUN.")
        for change in changes:
            log.info(change)
        batching = {"max_batch_size": args.max_batch_size, "timeout_ms": args.batch_timeout_ms} \
            if args.batching else None
        app = make_app(registry, args.max_body_bytes, batching, args.poll_seconds)
        try:
            web.run_app(app, host=args.host, port=args.port, print=lambda m: log.info(m.strip()))
        except OSError as exc:
            raise TfsftError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror}. Use --port.") from None

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
