"""The local REST server speaking TF Serving's API (`python -m tfsft.serve`, command in tfsft/cli/serve.py).

- `errors`    what clients are answered on failure, and start-up errors
- `versions`  (tfsft.versions) which folders are versions: shared with export and predict
- `registry`  models on disk: base path or models.config, loading, warm-up, hot reload
- `codec`     REST JSON -> numpy inputs and numpy outputs -> TF Serving's JSON (TF-free)
- `limits`    how many instances / input bytes one request may send (TF-free)
- `inference` one model call, TF errors turned into client answers
- `batching`  concurrent requests merged into one model call
- `app`       the aiohttp application: routes, error middleware, polling

The command line (arguments, start-up, graceful shutdown) is `tfsft.cli.serve`.
"""

import importlib

# Exported lazily (PEP 562), so `import tfsft.serving.codec` loads neither aiohttp nor the server.
_EXPORTS = {
    "make_app": "app",
    "InputSpec": "codec",
    "format_response": "codec",
    "ServeConfigError": "errors",
    "ServingError": "errors",
    "RequestLimits": "limits",
    "ModelRegistry": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tfsft.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tfsft.serving.{_EXPORTS[name]}"), name)
