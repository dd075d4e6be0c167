"""The models being served: found on disk (a base path or a TF Serving models.config), loaded with
TensorFlow, warmed up, and reloaded when versions appear or disappear.

A SavedModel on disk is the only contract with training: nothing here imports Keras or tfsft's
training code. TensorFlow is imported lazily, when the first model loads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tfsft.serving.codec import DEFAULT_SIGNATURE, InputSpec
from tfsft.serving.errors import CODE_NAMES, ServeConfigError, ServingError, first_line, invalid, tf_error_code
from tfsft.versions import version_folders

log = logging.getLogger("tfsft.serve")

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many warm-up records

PathLike = str | Path


@dataclass
class Servable:
    """One loaded version of one model: its signature functions and their input specs."""

    name: str
    version: int
    path: Path
    signatures: dict  # signature name -> callable taking keyword tensors, returning a dict of tensors
    input_specs: dict  # signature name -> {input name: InputSpec}
    signature_def_map: dict  # the SignatureDefMap as TF Serving prints it in /metadata
    loaded: object = None  # the tf.saved_model.load() object: owns the variables the functions use

    @classmethod
    def load(cls, name: str, version: int, path: Path) -> Servable:
        import tensorflow as tf

        try:
            import tensorflow_text  # noqa: F401  (registers the ops of in-graph tokenizers)
        except ImportError:
            pass
        loaded = tf.saved_model.load(str(path))
        signatures = dict(loaded.signatures)
        specs = {
            sig: {name: _input_spec(spec) for name, spec in fn.structured_input_signature[1].items()}
            for sig, fn in signatures.items()
        }
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


def _input_spec(spec) -> InputSpec:
    """A tf.TensorSpec as the TF-free codec sees it."""
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return InputSpec(spec.dtype.name, shape)


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
    return json_format.MessageToDict(
        signature_map, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


@dataclass
class ModelSource:
    """Where one model's versions live, and which of them to serve (TF Serving's ModelConfig)."""

    name: str
    base_path: Path
    labels: dict[str, int] = field(default_factory=dict)
    specific_versions: frozenset[int] | None = None  # model_version_policy { specific { versions: N } }
    latest_versions: int | None = None  # model_version_policy { latest { num_versions: N } }

    def wanted_versions(self) -> dict[int, Path]:
        on_disk = version_folders(self.base_path)
        if self.specific_versions is not None:
            return {v: p for v, p in on_disk.items() if v in self.specific_versions}
        if self.latest_versions is not None:
            return {v: on_disk[v] for v in sorted(on_disk)[-self.latest_versions :]}
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
        raise ServeConfigError(
            f"The model config file '{path}' is not a valid TF Serving models.config "
            f"(text-format ModelServerConfig): {exc}"
        ) from None
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
        raise ServeConfigError(
            f"Model '{entry.name}' in the {where} has model_platform "
            f"'{entry.model_platform}'; only \"tensorflow\" SavedModels can be served."
        )
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

    def __init__(self, base_path: PathLike | None = None, model_config_file: PathLike | None = None):
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
        assert self.base_path is not None  # __init__ takes exactly one of the two
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
            models: dict[str, dict[int, Servable]] = {}
            failures: dict[str, dict[int, _LoadFailure]] = {}
            changes: list[str] = []
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
            changes += [
                f"unloaded {name} version {v}"
                for name in sorted(set(self.models) - set(models))
                for v in sorted(self.models[name])
            ]
            self.models, self.failures = models, failures
            self.labels = {source.name: dict(source.labels) for source in sources}
            return changes

    def _load(self, name: str, version: int, path: Path, failures: dict) -> Servable | None:
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
            message = first_line(exc)
            log.error("Cannot load %s version %s from %s: %s", name, version, path, message)
            failures[version] = _LoadFailure(stamp, tf_error_code(exc), message)
            return None

    def resolve_label(self, name: str, label: str) -> int:
        labels = self.labels.get(name, {})
        if label not in labels:  # TF Serving answers INVALID_ARGUMENT (400) here, not NOT_FOUND
            raise invalid(f"Unrecognized servable version label: {label}")
        return labels[label]

    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
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

    def version_status(self, name: str, version: int | None = None, label: str | None = None) -> list[dict]:
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


def _status_entry(version: int, failure: _LoadFailure | None) -> dict:
    if failure is None:
        return {"version": str(version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    return {
        "version": str(version),
        "state": "END",
        "status": {"error_code": CODE_NAMES[failure.code], "error_message": failure.message},
    }


def signature_inputs(servable: Servable, signature_name: str) -> dict[str, InputSpec]:
    """The inputs of the signature a request names (TF Serving's errors when it has none or no such one)."""
    name = signature_name or DEFAULT_SIGNATURE
    if name not in servable.signatures:
        raise invalid(f'Serving signature name: "{name}" not found in signature def')
    specs = servable.input_specs[name]
    if not specs:
        raise invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    return specs
