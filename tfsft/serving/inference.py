"""One model call: numpy inputs through a loaded signature, TensorFlow's errors turned into client answers."""

from __future__ import annotations

import re

import numpy as np

from tfsft.serving.errors import HTTP_STATUS_OF_CODE, ServingError, first_line, invalid, tf_error_code
from tfsft.serving.registry import Servable

_TF_NOISE = re.compile(
    r"^Graph execution error:\s*Detected at node [^\n]*? defined at \(most recent call last\):\n"
    r"(?:<stack traces unavailable>\n|(?:[ \t][^\n]*\n)*)"
)


def clean_tf_message(message: str) -> str:
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
        raise ServingError(HTTP_STATUS_OF_CODE[tf_error_code(exc)], clean_tf_message(exc.message)) from None
    except (TypeError, ValueError) as exc:  # the signature wrapper refusing its arguments
        raise invalid(first_line(exc)) from None
    return {name: value.numpy() for name, value in outputs.items()}
