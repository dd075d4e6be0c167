"""Export a run's model as a TF Serving SavedModel with preprocessing inside the graph.

`saved_models/<name>/<version>/`: a client sends raw strings (text) or encoded image bytes and gets
probabilities, class ids and class names back. The version folder is written beside its target under
a temporary name, verified by reloading it in a fresh process that imports only `tensorflow` and
`tensorflow_text`, and only then renamed into place: a killed or failed export leaves no version that
TF Serving would load, and an existing version is never modified.

This module never imports the trainer: a run directory on disk is its only input.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tfsft.export_checks import ExportError, check_name_and_version, check_run_completed
from tfsft.export_verify import verify_in_fresh_process
from tfsft.task_types import task_type
from tfsft.versions import next_version, version_folders

if TYPE_CHECKING:
    import keras

    from tfsft.config import RunConfig
    from tfsft.data import Records, Splits
    from tfsft.modalities.base import Modality

log = logging.getLogger(__name__)

TOP_K = 5


# ----------------------------------------------------------------------------------------- versions
def _has_saved_model(model_dir: Path) -> bool:
    # Only SavedModel versions belong in TF Serving's config: `<name>-onnx/` folders hold model.onnx instead.
    return bool(version_folders(model_dir))


DOCKER_MODEL_ROOT = "/models"  # where scripts/serve_tfserving.sh and docker-compose.yml mount saved_models/


def _config_text(entries: list[tuple[str, str]]) -> str:
    body = "".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{base_path}"\n    model_platform: "tensorflow"\n  }}\n'
        for name, base_path in entries
    )
    return "model_config_list {\n" + body + "}\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_models_config(base: Path) -> Path:
    """TF Serving's `--model_config_file` (text format) listing every model under `base`.

    Two copies: `models.config` with this machine's absolute paths (for `tfsft.serve` or a local
    tensorflow_model_server) and `models.docker.config` with the paths inside the tensorflow/serving container,
    where `base` is mounted at /models.
    """
    models = sorted(p for p in base.iterdir() if p.is_dir() and _has_saved_model(p))
    _write_atomic(
        base / "models.docker.config", _config_text([(m.name, f"{DOCKER_MODEL_ROOT}/{m.name}") for m in models])
    )
    target = base / "models.config"
    _write_atomic(target, _config_text([(m.name, str(m.resolve())) for m in models]))
    return target


# ----------------------------------------------------------------------------------------- graph
def build_archive(
    config: RunConfig,
    class_names: list[str],
    model: keras.Model,
    modality: Modality,
    temperature: np.ndarray | None = None,
) -> Any:
    """A Keras ExportArchive whose endpoints take raw inputs; tokenizer/image resources tracked.

    `temperature` (tfsft.calibration): the logits are divided by it before the softmax/sigmoid."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    for resource in modality.serving_resources():
        archive.track(resource)

    def make_endpoint(signature: str, names: list[str]):
        def endpoint(*args):
            logits = modality.serving_outputs(model, signature, dict(zip(names, args)))
            if temperature is not None:
                logits = tf.cast(logits, tf.float32) / tf.constant(temperature, tf.float32)
            return task_type(config).serving_outputs(
                tf.cast(logits, tf.float32),
                class_names,
                config.evaluation.multilabel_threshold,
                config.data.label_separator,
                TOP_K,
            )

        return endpoint

    for signature, spec in modality.serving_signatures().items():
        names = list(spec)
        archive.add_endpoint(signature, make_endpoint(signature, names), input_signature=[spec[n] for n in names])
    return archive


# ----------------------------------------------------------------------------------------- assets
def _warmup_requests(name: str, modality: Modality, records: Records) -> bytes:
    """TF Serving's warm-up file: a TFRecord of PredictionLog protos (read with --enable_model_warmup)."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    raw = modality.serving_examples(records, min(4, len(records)))
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name="serving_default"))
    for key, values in raw.items():
        request.inputs[key].CopyFrom(
            tf.make_tensor_proto([v.encode() if isinstance(v, str) else v for v in values], dtype=tf.string)
        )
    log_record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tempfile.NamedTemporaryFile(suffix=".tfrecord", delete=False) as handle:
        tmp_name = handle.name
    with tf.io.TFRecordWriter(tmp_name) as writer:
        writer.write(log_record.SerializeToString())
    data = Path(tmp_name).read_bytes()
    os.unlink(tmp_name)
    return data


def _model_card(
    name: str, version: int, config: RunConfig, class_names: list[str], metrics: dict, verification: dict
) -> str:
    test = metrics.get("test") or metrics.get("validation") or {}
    backbone = config.model.backbone
    lines = [
        f"# {name} v{version}",
        "",
        f"- task: {config.task.modality} {config.task.type}",
        f"- backbone: {backbone.preset or backbone.name or backbone.architecture}",
        f"- classes: {', '.join(class_names) if class_names else '(regression)'}",
        f"- trained: {config.training.epochs} epochs, {config.optimizer.name} lr {config.optimizer.learning_rate}, "
        f"freeze {config.freeze.strategy}",
    ]
    for key in ("accuracy", "macro_f1", "weighted_f1", "subset_accuracy", "mae", "rmse"):
        if test.get(key) is not None:
            lines.append(f"- test {key}: {test[key]:.4f}")
    lines += [
        "",
        f"Export verified in a fresh TensorFlow process on {verification['examples']} examples "
        f"(max |difference| {verification['max_abs_difference']:.1e}).",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- export
@dataclass
class ExportSource:
    """A finished run opened for export: its Keras model wired to the modality, and the version to write."""

    run_dir: Path
    config: RunConfig
    class_names: list[str]
    model: keras.Model
    modality: Modality
    splits: Splits
    name: str
    model_dir: Path
    version: int
    trained_policy: str  # the model computes in float32 whatever it was trained under (runs.use_float32_compute)

    @property
    def examples(self) -> Records:
        """Records to verify and warm up with: the test split, else validation, else train."""
        return self.splits.test or self.splits.validation or self.splits.train


def open_export(
    run_dir: str | Path,
    base_path: str | Path,
    name: str | None,
    version: int | None,
    suffix: str = "",
    force: bool = False,
) -> ExportSource:
    """Load a run and pick its version folder `<base_path>/<name><suffix>/<version>` (never an existing one).

    A run that did not complete is refused unless `force`; so are names and versions TF Serving would not serve.
    """
    from tfsft.data import load_splits
    from tfsft.modalities import get_modality
    from tfsft.runs import load_run, use_float32_compute

    run_dir = Path(run_dir)
    check_run_completed(run_dir, force)  # all checks before the model loads, so nothing is written
    check_name_and_version((name or "run") + suffix, version)
    config, class_names, model = load_run(run_dir)
    trained_policy = use_float32_compute(model)
    name = (name or config.name) + suffix
    check_name_and_version(name, version)
    model_dir = Path(base_path) / name
    if Path(base_path).exists() and not Path(base_path).is_dir():
        raise ExportError(
            f"The base path '{base_path}' is a file, not a folder. Pass --base-path with a folder "
            f"(it is created if missing)."
        )
    if version is not None and version in version_folders(model_dir, marker=None):
        raise ExportError(
            f"Version {version} of '{name}' already exists in {model_dir}; exported versions are "
            f"never overwritten. Omit --version to take the next free one ({next_version(model_dir)})."
        )
    version = version or next_version(model_dir)
    modality = get_modality(config)
    splits = load_splits(config, modality.read)
    modality.prepare(splits.train, run_dir)
    modality.use_model_inputs(model)
    return ExportSource(run_dir, config, class_names, model, modality, splits, name, model_dir, version, trained_policy)


@contextmanager
def staged_version(model_dir: Path, version: int):
    """Yield a hidden staging folder beside `model_dir/<version>`; rename it into place when the block succeeds,
    delete it when it fails, so a model server (TF Serving, Triton) never sees a half-written version."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; a serving container may run as another user
    try:
        yield staging
        target = model_dir / str(version)
        if target.exists():
            raise ExportError(f"{target} appeared while exporting; not overwriting it. Export again.")
        os.rename(staging, target)  # atomic on one filesystem
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_run(
    run_dir: str | Path,
    base_path: str | Path = "saved_models",
    name: str | None = None,
    version: int | None = None,
    verify: bool = True,
    force: bool = False,
) -> Path:
    import tensorflow as tf

    source = open_export(run_dir, base_path, name, version, force=force)
    run_dir, config, class_names, model, modality = (
        source.run_dir,
        source.config,
        source.class_names,
        source.model,
        source.modality,
    )
    name, version, examples = source.name, source.version, source.examples
    from tfsft.calibration import load_temperature

    temperature = load_temperature(run_dir)  # evaluation.calibrate: baked into the probabilities
    with staged_version(source.model_dir, version) as staging:
        archive = build_archive(config, class_names, model, modality, temperature)
        archive.write_out(str(staging), verbose=False)
        verification = (
            verify_in_fresh_process(staging, config, class_names, model, modality, examples, temperature)
            if verify
            else {"examples": 0, "max_abs_difference": float("nan"), "signatures": []}
        )
        extra = staging / "assets.extra"
        extra.mkdir()
        metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
        (extra / "classes.json").write_text(json.dumps(class_names, indent=1))
        shutil.copy(run_dir / "config.yaml", extra / "config.yaml")
        (extra / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (extra / "export.json").write_text(
            json.dumps(
                {
                    "run": str(run_dir.resolve()),
                    "version": version,
                    "tensorflow": tf.__version__,
                    **_text_version(),
                    "verification": verification,
                    "calibration_temperature": None if temperature is None else temperature.tolist(),
                },
                indent=1,
            )
        )
        (extra / "model_card.md").write_text(_model_card(name, version, config, class_names, metrics, verification))
        (extra / "tf_serving_warmup_requests").write_bytes(_warmup_requests(name, modality, examples))
    target = source.model_dir / str(version)
    write_models_config(Path(base_path))
    log.info("Exported %s version %d -> %s", name, version, target)
    return target


def _text_version() -> dict:
    try:
        import tensorflow_text

        return {"tensorflow_text": tensorflow_text.__version__}
    except ImportError:
        return {}


def __getattr__(name: str):
    """`tfsft.export.main` (console scripts installed before the move name it): the command lives in
    tfsft/cli/export.py, which imports this module, so it is looked up only when asked for."""
    if name == "main":
        from tfsft.cli.export import main

        return main
    raise AttributeError(f"module 'tfsft.export' has no attribute {name!r}")


if __name__ == "__main__":
    from tfsft.cli.export import main

    sys.exit(main())
