"""How much work one predict request may ask for: a cap on its instances and on its decoded input bytes.

One request must not own the server: without caps, 60,000 texts in one 60 MB body computed for minutes
on a 2-core machine long after the client gave up. The defaults are sized so a 2-core CPU answers a
request at the cap in seconds with a small model; `python -m tfsft.serve --max-instances/--max-input-bytes`
changes them. A refused request gets HTTP 413 and TF Serving's `{"error": ...}` document. TF-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfsft.serving.errors import ServingError

DEFAULT_MAX_INSTANCES = 256
DEFAULT_MAX_INPUT_BYTES = 16 * 1024 * 1024
TOO_LARGE = 413


@dataclass(frozen=True)
class RequestLimits:
    max_instances: int = DEFAULT_MAX_INSTANCES
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES

    def check_rows(self, body: dict) -> None:
        """Refuse a request with too many instances before any of it is converted."""
        rows = requested_rows(body)
        if rows > self.max_instances:
            raise ServingError(
                TOO_LARGE,
                f"The request has {rows} instances; this server answers at most "
                f"{self.max_instances} per request (--max-instances). Send them in "
                f"requests of at most {self.max_instances}.",
            )

    def check_size(self, arrays: dict[str, np.ndarray]) -> None:
        """Refuse a request whose decoded inputs (strings, b64 bytes, numbers) exceed max_input_bytes."""
        size = sum(input_bytes(array) for array in arrays.values())
        if size > self.max_input_bytes:
            raise ServingError(
                TOO_LARGE,
                f"The request's inputs hold {size} bytes once decoded; this server "
                f"takes at most {self.max_input_bytes} per request (--max-input-bytes). "
                f"Send fewer or smaller instances per request.",
            )


def requested_rows(body: dict) -> int:
    """The batch size a request asks for, counted on the parsed JSON (0 when its format is wrong)."""
    if "instances" in body:
        instances = body["instances"]
        return len(instances) if isinstance(instances, list) else 0
    inputs = body.get("inputs")
    if isinstance(inputs, dict) and not (len(inputs) == 1 and "b64" in inputs):
        return max((len(v) if isinstance(v, list) else 1 for v in inputs.values()), default=0)
    return len(inputs) if isinstance(inputs, list) else (0 if inputs is None else 1)


def input_bytes(array: np.ndarray) -> int:
    if array.dtype == object:
        return sum(len(item) for item in array.ravel().tolist())
    return int(array.nbytes)
