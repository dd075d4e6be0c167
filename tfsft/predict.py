"""Batch prediction with an exported SavedModel: the version folder to use, its signature, and one output row
per raw input (texts as UTF-8 bytes, images as encoded bytes), TF's rejections named per input.

Like TF Serving, it needs only TensorFlow (+ TF Text for text models): no Keras model, no training code.
The command line (`python -m tfsft.predict`: arguments, reading inputs, writing rows) is tfsft/cli/predict.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from tfsft.errors import TfsftError
from tfsft.versions import SAVED_MODEL_FILE, latest_version_dir


def resolve_version(model: Path) -> Path:
    """A version folder: `model` itself if it holds saved_model.pb, else its highest integer sub-folder."""
    if (model / SAVED_MODEL_FILE).exists():
        return model
    latest = latest_version_dir(model)
    if latest is None:
        raise TfsftError(
            f"--model '{model}' holds no SavedModel: give saved_models/<name> (its latest version is "
            f"used) or saved_models/<name>/<version>. Export one with python -m tfsft.export --run RUN."
        )
    return latest


def load_signature(version_dir: Path, signature: str):
    import tensorflow as tf

    try:
        import tensorflow_text  # noqa: F401  (ops used by in-graph tokenizers)
    except ImportError:
        pass
    loaded = tf.saved_model.load(str(version_dir))
    if signature not in loaded.signatures:
        raise TfsftError(f"Signature '{signature}' is not in {version_dir}; it has {sorted(loaded.signatures)}.")
    fn = loaded.signatures[signature]
    return loaded, fn


def predict(
    version_dir: Path, items: list[tuple[str, bytes]], batch_size: int = 64, signature: str = "serving_default"
) -> Iterator[dict]:
    import tensorflow as tf

    _, fn = load_signature(version_dir, signature)
    inputs = list(fn.structured_input_signature[1])
    if len(inputs) != 1:
        raise TfsftError(f"The model's {signature} takes {inputs}; predict supports single-input models.")
    name = inputs[0]
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        try:
            outputs = fn(**{name: tf.constant([raw for _, raw in batch])})
        except tf.errors.InvalidArgumentError as exc:
            raise _rejected(fn, name, batch, start, exc) from None
        arrays = {k: v.numpy() for k, v in outputs.items()}
        for i, (label, _) in enumerate(batch):
            row = {"input": label}
            for key, array in sorted(arrays.items()):
                value = array[i]
                value = value.tolist() if hasattr(value, "tolist") else value
                row[key] = _decode(value)
            yield row


def _rejected(fn, name: str, batch: list, start: int, exc) -> TfsftError:
    """Which input of a rejected batch the model refuses, and why (TF only says 'Graph execution error')."""
    import tensorflow as tf

    from tfsft.errors import clean_tf_message

    for offset, (label, raw) in enumerate(batch):
        try:
            fn(**{name: tf.constant([raw])})
        except tf.errors.InvalidArgumentError as single:
            return TfsftError(
                f"The model rejected input {start + offset + 1} ('{label[:200]}'): "
                f"{clean_tf_message(single.message)}. Check it is a valid {name}."
            )
    return TfsftError(
        f"The model rejected inputs {start + 1}..{start + len(batch)}: {clean_tf_message(exc.message)}. "
        f"Check they are valid {name}."
    )


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def __getattr__(name: str):
    """`tfsft.predict.main` (console scripts installed before the move name it): the command now lives in
    tfsft/cli/predict.py, which imports this module, so it is looked up only when asked for."""
    if name == "main":
        from tfsft.cli.predict import main

        return main
    raise AttributeError(f"module 'tfsft.predict' has no attribute {name!r}")


if __name__ == "__main__":  # `python -m tfsft.predict`: alias; the command lives in tfsft/cli/predict.py
    from tfsft.cli.predict import main

    sys.exit(main())
