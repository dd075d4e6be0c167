"""The local REST server speaking TF Serving's API (`python -m tfsft.serve`).

- `errors`    what clients are answered on failure, and start-up errors
- `versions`  (tfsft.versions) which folders are versions: shared with export and predict
- `registry`  models on disk: base path or models.config, loading, warm-up, hot reload
- `codec`     REST JSON -> numpy inputs and numpy outputs -> TF Serving's JSON (TF-free)
- `limits`    how many instances / input bytes one request may send (TF-free)
- `inference` one model call, TF errors turned into client answers
- `batching`  concurrent requests merged into one model call
- `app`       the aiohttp application: routes, error middleware, polling
- `cli`       the command line: arguments, start-up, graceful shutdown
"""

from tfsft.serving.app import make_app
from tfsft.serving.cli import main
from tfsft.serving.codec import InputSpec, format_response
from tfsft.serving.errors import ServeConfigError, ServingError
from tfsft.serving.limits import RequestLimits
from tfsft.serving.registry import ModelRegistry

__all__ = ["InputSpec", "ModelRegistry", "RequestLimits", "ServeConfigError", "ServingError", "format_response",
           "main", "make_app"]
