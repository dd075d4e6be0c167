"""Export a run's Keras model as ONNX, laid out for Triton's model repository or plain onnxruntime.

`<base_path>/<name>-onnx/<version>/model.onnx`: unlike the SavedModel export, the graph holds the Keras
model only. ONNX has no ops for the WordPiece tokenizer (TF Text) or for image decoding, so a client
sends already-preprocessed tensors (text: token ids / segment ids / padding mask; images: float32
pixels of the training size, normalized inside the model). `preprocessing.json` beside the model says
exactly what the client must do; `classes.json`, `config.yaml` and (text) `vocab.txt` travel with it.

The version folder is built under a temporary name beside its target, verified with onnxruntime against
the Keras model on real examples, and only then renamed into place: a failed export leaves no version,
and an existing version is never modified. This module never imports the trainer.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfsft.export import ExportError, open_export, staged_version
from tfsft.export_verify import VERIFY_EXAMPLES
from tfsft.task_types import task_type

if TYPE_CHECKING:
    from tfsft.config import RunConfig
    from tfsft.data import Records
    from tfsft.modalities.base import Modality

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
DIR_SUFFIX = "-onnx"  # beside the SavedModel folder of the same name under one base path
# onnxruntime and TensorFlow order float32 reductions differently; 1e-4 on logits is far below any decision.
VERIFY_TOLERANCE = 1e-4
INSTALL_HINT = 'pip install -e ".[onnx]"'


# ----------------------------------------------------------------------------------------- dependencies
def require_onnx_packages() -> None:
    """tf2onnx converts, onnxruntime verifies; both come with the optional `onnx` extra."""
    for package in ("tf2onnx", "onnxruntime", "onnx"):
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise ExportError(
                f"The ONNX export needs the packages tf2onnx and onnxruntime, and '{package}' cannot "
                f"be imported ({_first_line(exc)}). "
                f"Install them with: {INSTALL_HINT}"
            ) from None


# ----------------------------------------------------------------------------------------- model
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def convert(model, path: Path) -> None:
    """Keras 3's own ONNX export (tf2onnx on the model's concrete function); the model must have been called."""
    # tf2onnx logs every rewrite at INFO and its numpy-2 shim warns; neither helps a user.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.export(str(path), format="onnx", verbose=False)
    except Exception as exc:  # tf2onnx raises anything from KeyError to ValueError on an op it cannot map
        raise ExportError(
            f"tf2onnx cannot convert this model to ONNX: {_first_line(exc)}. The SavedModel export "
            f"(--format savedmodel, the default) handles every model tfsft trains; use it with TF "
            f"Serving or `python -m tfsft.serve`."
        ) from exc
    if not path.is_file():
        raise ExportError(
            f"tf2onnx finished without writing {path.name}. The SavedModel export "
            f"(--format savedmodel, the default) works for this model."
        )


def name_tensors(path: Path, output_name: str, dynamic_axes: dict[int, str]) -> None:
    """Readable names where tf2onnx leaves `Identity:0` and `unk__123`: Triton configs and clients refer to them."""
    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [output_name if n == old else n for n in node.output]
        node.input[:] = [output_name if n == old else n for n in node.input]
    graph.output[0].name = output_name
    for value in [*graph.input, *graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value") and axis in dynamic_axes:
                dim.dim_param = dynamic_axes[axis]
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def session(path: Path):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(
            f"tf2onnx wrote an ONNX model that onnxruntime cannot load: {_first_line(exc)}. The "
            f"SavedModel export (--format savedmodel, the default) works for this model."
        ) from exc


def _tensor_info(arg) -> dict:
    dtype = arg.type.removeprefix("tensor(").removesuffix(")")
    return {
        "name": arg.name,
        "dtype": {"float": "float32", "double": "float64"}.get(dtype, dtype),
        "shape": [d if isinstance(d, int) else (d or None) for d in arg.shape],
    }


# ----------------------------------------------------------------------------------------- verification
def verification_batch(modality: Modality, records: Records, count: int = VERIFY_EXAMPLES):
    """Real examples through the run's own evaluation pipeline: exactly what the Keras model sees."""
    subset = records.subset(range(min(count, len(records))))
    targets = np.zeros((len(subset), 1), np.float32)
    features, _ = next(iter(modality.dataset(subset, targets, training=False, batch_size=len(subset))))
    if isinstance(features, dict):
        return {name: value.numpy() for name, value in features.items()}
    return features.numpy()


def onnx_feed(ort_session, batch) -> dict:
    if isinstance(batch, dict):
        return {arg.name: np.asarray(batch[arg.name]) for arg in ort_session.get_inputs()}
    return {ort_session.get_inputs()[0].name: np.asarray(batch)}


def max_difference(ort_session, model, batch) -> float:
    """Largest |ONNX - Keras| over the model outputs (logits or values) of one batch, in float32."""
    expected = np.asarray(model(batch, training=False), np.float32)
    got = ort_session.run(None, onnx_feed(ort_session, batch))[0]
    return float(np.max(np.abs(got.astype(np.float32) - expected)))


# ----------------------------------------------------------------------------------------- side files
def _outputs_doc(config: RunConfig, class_names: list[str]) -> dict:
    meaning = task_type(config).onnx_output_meaning(config.evaluation.multilabel_threshold)
    return {"meaning": meaning, "classes_file": "classes.json", "num_classes": len(class_names)}


def preprocessing_doc(config: RunConfig, modality: Modality, ort_session, folder: Path) -> dict:
    return {
        "format": "onnx",
        "modality": config.task.modality,
        "preprocessing_inside_model": False,
        **modality.onnx_preprocessing(folder),
        "inputs": [_tensor_info(arg) for arg in ort_session.get_inputs()],
        "outputs": [_tensor_info(arg) for arg in ort_session.get_outputs()],
    }


def write_side_files(
    folder: Path,
    run_dir: Path,
    config: RunConfig,
    class_names: list[str],
    modality: Modality,
    ort_session,
    export_info: dict,
) -> None:
    """What a client needs beside model.onnx: preprocessing.json (+ vocabulary), classes, config, export record."""
    preprocessing = preprocessing_doc(config, modality, ort_session, folder)
    preprocessing["outputs"][0].update(_outputs_doc(config, class_names))
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing, indent=1))
    (folder / "classes.json").write_text(json.dumps(class_names, indent=1))
    shutil.copy(run_dir / "config.yaml", folder / "config.yaml")
    (folder / "export.json").write_text(json.dumps(export_info, indent=1))
    for file in folder.iterdir():
        file.chmod(0o644)


def _versions_info() -> dict:
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _opset(path: Path) -> int | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


# ----------------------------------------------------------------------------------------- export
def check_against_keras(ort_session, model, batch) -> tuple[float, int]:
    """(largest |ONNX - Keras| output difference, examples compared); raises ExportError above the tolerance."""
    difference = max_difference(ort_session, model, batch)
    examples = len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)
    if not difference <= VERIFY_TOLERANCE:  # `not <=` also catches NaN
        raise ExportError(
            f"The ONNX model's outputs differ from the Keras model's by {difference:.2e} "
            f"(> {VERIFY_TOLERANCE}) on {examples} examples; nothing was exported. The SavedModel "
            f"export (--format savedmodel, the default) works for this model."
        )
    return difference, examples


def export_onnx(
    run_dir: str | Path,
    base_path: str | Path = "saved_models",
    name: str | None = None,
    version: int | None = None,
    force: bool = False,
) -> Path:
    require_onnx_packages()
    source = open_export(run_dir, base_path, name, version, suffix=DIR_SUFFIX, force=force)
    run_dir, config, class_names, modality = source.run_dir, source.config, source.class_names, source.modality
    name, version = source.name, source.version
    model, trained_policy = source.model, source.trained_policy  # computing in float32 (tf2onnx needs it)
    batch = verification_batch(modality, source.examples)

    with staged_version(source.model_dir, version) as staging:
        model(batch, training=False)  # Keras exports only a model that has been called
        convert(model, staging / MODEL_FILE)
        name_tensors(staging / MODEL_FILE, task_type(config).onnx_output, modality.onnx_dynamic_axes())
        ort_session = session(staging / MODEL_FILE)
        difference, examples = check_against_keras(ort_session, model, batch)
        write_side_files(
            staging,
            run_dir,
            config,
            class_names,
            modality,
            ort_session,
            {
                "run": str(run_dir.resolve()),
                "name": name,
                "version": version,
                "format": "onnx",
                "trained_dtype_policy": trained_policy,
                "exported_compute_dtype": "float32",
                "opset": _opset(staging / MODEL_FILE),
                **_versions_info(),
                "verification": {
                    "examples": examples,
                    "compared": "Keras model outputs vs onnxruntime (CPU), float32",
                    "max_abs_difference": difference,
                    "tolerance": VERIFY_TOLERANCE,
                },
            },
        )
    target = source.model_dir / str(version)
    log.info(
        "Exported %s version %d -> %s (max |ONNX - Keras| %.1e on %d examples)",
        name,
        version,
        target / MODEL_FILE,
        difference,
        examples,
    )
    log.warning(
        "Preprocessing is NOT inside the ONNX model: clients must %s as described in %s.",
        modality.onnx_client_steps,
        target / "preprocessing.json",
    )
    return target
