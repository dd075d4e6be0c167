"""Errors of the REST server: what a client is answered (`{"error": message}` + HTTP status, as TF Serving)
and what stops the server from starting. TF-free."""

from __future__ import annotations

from tfsft.errors import TfsftError

# TF status codes (tf.errors.*, index = code) as TF Serving names them in model status documents,
# and the HTTP status TF Serving answers for each (tensorflow_serving/model_servers/http_server.cc).
CODE_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
HTTP_STATUS_OF_CODE = (200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401)


class ServingError(Exception):
    """An error answered to the client as `{"error": message}` with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ServeConfigError(TfsftError):
    """The model base path or models.config file cannot be used (reported at start-up, logged on reloads)."""


def invalid(message: str) -> ServingError:
    """TF Serving's INVALID_ARGUMENT: HTTP 400."""
    return ServingError(400, message)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tf_error_code(exc: BaseException) -> int:
    code = getattr(exc, "error_code", 2)  # tf.errors.OpError carries one; anything else is UNKNOWN
    return code if isinstance(code, int) and 0 <= code < len(CODE_NAMES) else 2
