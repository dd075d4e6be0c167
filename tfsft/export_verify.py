"""The export's last check: the SavedModel reloaded in a fresh process that imports only `tensorflow` and
`tensorflow_text` (as TF Serving would), answering like the Keras model on a few examples of the run's data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfsft.export_checks import ExportError
from tfsft.task_types import task_type

if TYPE_CHECKING:
    import keras

    from tfsft.config import RunConfig
    from tfsft.data import Records
    from tfsft.modalities.base import Modality

VERIFY_EXAMPLES = 16
VERIFY_TOLERANCE = 1e-5

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
