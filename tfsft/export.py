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
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tfsft.export_checks import ExportError, check_name_and_version, check_run_completed, run_state
from tfsft.task_types import task_type
from tfsft.versions import next_version, version_folders

if TYPE_CHECKING:
    import keras

    from tfsft.config import RunConfig
    from tfsft.data import Records, Splits
    from tfsft.modalities.base import Modality

log = logging.getLogger(__name__)

TOP_K = 5
VERIFY_EXAMPLES = 16
VERIFY_TOLERANCE = 1e-5


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


# ----------------------------------------------------------------------------------------- verification
_VERIFY_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the text ops an exported tokenizer uses)
path, inputs_file, output_file = sys.argv[1:4]
loaded = tf.saved_model.load(path)
request = json.load(open(inputs_file))
fn = loaded.signatures["serving_default"]
tensors = {name: tf.constant([bytes.fromhex(v) for v in values]) for name, values in request.items()}
outputs = fn(**tensors)
np.savez(output_file, **{k: v.numpy() for k, v in outputs.items() if v.dtype != tf.string})
strings = {k: [s.decode("utf-8") for s in v.numpy().reshape(-1)] for k, v in outputs.items() if v.dtype == tf.string}
# TensorFlow itself imports parts of keras; what must not load is KerasHub or tfsft.
foreign = sorted({m.split(".")[0] for m in sys.modules} & {"keras_hub", "tfsft"})
print(json.dumps({"signatures": sorted(loaded.signatures), "strings": strings, "foreign_modules": foreign}))
"""


def _expected_scores(
    config: RunConfig,
    model: keras.Model,
    modality: Modality,
    records: Records,
    count: int,
    temperature: np.ndarray | None = None,
) -> tuple[Records, np.ndarray]:
    """Scores of the Keras model on the training-time input pipeline (not the exported preprocessing)."""
    subset = records.subset(range(min(count, len(records))))
    targets = np.zeros((len(subset), model.output_shape[-1]), np.float32)
    dataset = modality.dataset(subset, targets, training=False, batch_size=len(subset))
    logits = model.predict(dataset.map(lambda x, y: x), verbose=0)
    if temperature is not None:
        logits = np.asarray(logits, np.float32) / temperature
    return subset, task_type(config).activation(logits)


def verify_in_fresh_process(
    path: Path,
    config: RunConfig,
    class_names: list[str],
    model: keras.Model,
    modality: Modality,
    records: Records,
    temperature: np.ndarray | None = None,
) -> dict:
    """Reload the SavedModel with only TF + TF Text and compare its scores with the Keras model's."""
    subset, expected = _expected_scores(config, model, modality, records, VERIFY_EXAMPLES, temperature)
    raw = modality.serving_examples(subset, len(subset))
    with tempfile.TemporaryDirectory() as tmp:
        inputs_file, output_file = Path(tmp) / "inputs.json", Path(tmp) / "outputs.npz"
        inputs_file.write_text(
            json.dumps(
                {
                    name: [(v.encode("utf-8") if isinstance(v, str) else v).hex() for v in values]
                    for name, values in raw.items()
                }
            )
        )
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        result = subprocess.run(
            [sys.executable, "-c", _VERIFY_SCRIPT, str(path), str(inputs_file), str(output_file)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if result.returncode != 0:
            raise ExportError(
                f"The exported SavedModel does not load or run in a fresh TensorFlow process: "
                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no output'}"
            )
        outputs = dict(np.load(output_file, allow_pickle=False))
    info = json.loads(result.stdout.strip().splitlines()[-1])
    if info["foreign_modules"]:
        raise ExportError(f"Loading the export pulled in {info['foreign_modules']}: it must need only TensorFlow.")
    task = task_type(config)
    key = task.score_output
    got = outputs[key].reshape(expected.shape)
    difference = float(np.max(np.abs(got - expected)))
    if difference > VERIFY_TOLERANCE:
        raise ExportError(
            f"The exported model's {key} differ from the Keras model's by {difference:.2e} "
            f"(> {VERIFY_TOLERANCE}) on {len(subset)} examples; nothing was exported."
        )
    if task.single_label:
        expected_names = [class_names[i] for i in expected.argmax(axis=-1)]
        if info["strings"]["class_name"] != expected_names:
            raise ExportError("The exported model's class names differ from the Keras model's predictions.")
    return {"examples": len(subset), "max_abs_difference": difference, "signatures": info["signatures"]}


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
    from tfsft.runs import load_run

    run_dir = Path(run_dir)
    check_run_completed(run_dir, force)  # all checks before the model loads, so nothing is written
    check_name_and_version((name or "run") + suffix, version)
    config, class_names, model = load_run(run_dir)
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
    return ExportSource(run_dir, config, class_names, model, modality, splits, name, model_dir, version)


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


def main(argv=None) -> int:
    import argparse

    from tfsft.cli import quiet_tensorflow, run_main, setup_logging
    from tfsft.cli.common import ParagraphParser, model_name, non_empty, version_number

    parser = ParagraphParser(
        prog="python -m tfsft.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, type=non_empty, help="A finished run directory (runs/<name>/<id>).")
    parser.add_argument(
        "--base-path", default="saved_models", type=non_empty, help="Model base path (default saved_models/)."
    )
    parser.add_argument("--name", type=model_name, help="Model name, a single folder name (default: the run's name).")
    parser.add_argument(
        "--version", type=version_number, help="Version number, a positive integer (default: the next free one)."
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="Export a run whose status.json does not say completed (its state is printed).",
    )
    parser.add_argument("--no-verify", action="store_true", help="Skip the fresh-process reload check.")
    parser.add_argument(
        "--format",
        choices=("savedmodel", "onnx"),
        default="savedmodel",
        help="savedmodel (default): TF Serving, preprocessing inside. onnx: <name>-onnx/<version>/"
        "model.onnx for Triton/onnxruntime, preprocessing left to the client (tfsft.onnx_export).",
    )
    args = parser.parse_args(argv)
    if args.format == "onnx" and args.no_verify:
        parser.error("--no-verify is for --format savedmodel; the ONNX export is always verified.")
    quiet_tensorflow()
    setup_logging()

    def run():
        if args.force:
            state = run_state(Path(args.run))
            print(
                f"--force: exporting the run '{args.run}' in state '{state or 'unknown (no status.json)'}'.",
                file=sys.stderr,
                flush=True,
            )
        if args.format == "onnx":
            from tfsft.onnx_export import export_onnx

            target = export_onnx(args.run, args.base_path, args.name, args.version, force=args.force)
        else:
            target = export_run(
                args.run, args.base_path, args.name, args.version, verify=not args.no_verify, force=args.force
            )
        print(f"Exported {target}")

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
