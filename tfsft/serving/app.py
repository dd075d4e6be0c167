"""The aiohttp application: TF Serving's REST routes, JSON errors, limits, and background model polling.

Handlers never block the event loop: TensorFlow calls and large JSON work run in a thread pool. A
handler whose client disconnects is cancelled (the server runs with aiohttp's handler cancellation),
which drops its queued model call; a call already running in TensorFlow finishes, but its answer is
discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from aiohttp import web

from tfsft.serving.batching import Batcher
from tfsft.serving.codec import DEFAULT_SIGNATURE, format_response, parse_json_body, request_arrays
from tfsft.serving.errors import ServingError
from tfsft.serving.inference import call_signature
from tfsft.serving.limits import RequestLimits
from tfsft.serving.registry import ModelRegistry, Servable, signature_inputs

log = logging.getLogger("tfsft.serve")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
REGISTRY_KEY = web.AppKey("registry", ModelRegistry)
INLINE_JSON_BYTES = 16 * 1024  # request bodies up to this size are parsed on the event loop
INLINE_OUTPUT_VALUES = 4096  # responses with up to this many output values are formatted on the event loop


def _error_response(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class RestApi:
    """The request handlers; TensorFlow and heavy JSON work go to thread pools, never the event loop."""

    def __init__(
        self,
        registry: ModelRegistry,
        max_body_bytes: int,
        batching: dict | None,
        poll_seconds: float,
        workers: int | None,
        limits: RequestLimits,
    ):
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.poll_seconds = poll_seconds
        self.limits = limits
        self._busy = 0  # worker threads inside a call now: what a shutdown would have to wait for
        self._busy_lock = threading.Lock()
        # TF parallelises inside each op already, so a few request threads are enough; model loading
        # gets its own thread so a slow load never holds up inference.
        self.workers = ThreadPoolExecutor(
            max_workers=workers or max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="tfsft-serve"
        )
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfsft-load")
        self.batcher = Batcher(self._call, **batching) if batching is not None else None

    @property
    def busy_threads(self) -> int:
        return self._busy

    def _tracked(self, fn, *args):
        with self._busy_lock:
            self._busy += 1
        try:
            return fn(*args)
        finally:
            with self._busy_lock:
                self._busy -= 1

    async def _offload(self, fn, *args):
        # Cancelling the awaiting handler (client gone, shutdown) cancels this call while it is still queued.
        return await asyncio.get_running_loop().run_in_executor(self.workers, self._tracked, fn, *args)

    async def _call(self, servable: Servable, signature: str, arrays: dict) -> dict:
        return await self._offload(call_signature, servable, signature, arrays)

    @staticmethod
    def _model_spec(request: web.Request) -> tuple[str, int | None, str | None]:
        """(model name, version, label) from the URL; the routes only let digits through as a version."""
        match = request.match_info
        version = int(match["version"]) if "version" in match else None
        return match["name"], version, match.get("label")

    async def _cpu(self, small: bool, fn, *args):
        # A thread hop costs more than parsing or formatting a small request; only big ones leave the loop.
        return fn(*args) if small else await self._offload(fn, *args)

    async def predict(self, request: web.Request) -> web.Response:
        raw = await request.read()
        small = len(raw) <= INLINE_JSON_BYTES
        body = await self._cpu(small, parse_json_body, raw)  # JSON first, then the model: TF Serving's order
        servable = self.registry.get(*self._model_spec(request))
        signature = body.get("signature_name") or DEFAULT_SIGNATURE
        specs = signature_inputs(servable, signature)
        self.limits.check_rows(body)  # before converting: a huge request is refused for the cost of parsing it
        arrays, row_format = await self._cpu(small, request_arrays, body, specs)
        self.limits.check_size(arrays)
        if self.batcher is not None and Batcher.can_batch(arrays):
            outputs = await self.batcher.submit(servable, signature, arrays)
        else:
            outputs = await self._call(servable, signature, arrays)
        small_output = sum(np.asarray(v).size for v in outputs.values()) <= INLINE_OUTPUT_VALUES
        text = await self._cpu(small_output, format_response, outputs, row_format)
        return web.Response(text=text, content_type="application/json")

    async def status(self, request: web.Request) -> web.Response:
        statuses = self.registry.version_status(*self._model_spec(request))
        return web.json_response({"model_version_status": statuses})

    async def metadata(self, request: web.Request) -> web.Response:
        servable = self.registry.get(*self._model_spec(request))
        return web.json_response(
            {
                "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": servable.signature_def_map},
            }
        )

    @web.middleware
    async def errors_as_json(self, request: web.Request, handler) -> web.StreamResponse:
        """Every failure answers `{"error": ...}` like TF Serving; details of the unexpected stay in the log."""
        try:
            return await handler(request)
        except ServingError as exc:
            return _error_response(exc.status, exc.message)
        except web.HTTPRequestEntityTooLarge:
            return _error_response(
                413, f"Request body is larger than {self.max_body_bytes} bytes (the server's --max-body-bytes limit)"
            )
        except web.HTTPMethodNotAllowed as exc:
            return _error_response(
                405,
                f"Malformed request: {request.method} {request.path}",
                {"Allow": ", ".join(sorted(exc.allowed_methods))},
            )
        except web.HTTPNotFound:  # TF Serving: 400 for unknown /v1/ paths, plain 404 elsewhere
            status = 400 if request.path.lower().startswith("/v1/") else 404
            return _error_response(status, f"Malformed request: {request.method} {request.path}")
        except web.HTTPException as exc:
            return _error_response(exc.status, exc.reason)
        except Exception:
            log.exception("Unexpected error answering %s %s", request.method, request.path)
            return _error_response(500, "Internal server error; the server log has the details")

    async def poll_models(self, app: web.Application):
        """Cleanup context: look for new and removed versions every poll_seconds while the app runs."""

        async def poll_forever():
            loop, last_error = asyncio.get_running_loop(), None
            while True:
                await asyncio.sleep(self.poll_seconds)
                try:
                    for change in await loop.run_in_executor(self.loader, self.registry.refresh):
                        log.info(change)
                    last_error = None
                except Exception as exc:  # e.g. a models.config being edited: keep serving what is loaded
                    if str(exc) != last_error:  # once per distinct problem, not every poll
                        log.error("Looking for model changes failed; still serving what is loaded: %s", exc)
                    last_error = str(exc)

        task = asyncio.create_task(poll_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def shutdown(self, app: web.Application) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.loader.shutdown(wait=False, cancel_futures=True)


API_KEY = web.AppKey("api", RestApi)


def make_app(
    registry: ModelRegistry,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    batching: dict | bool | None = None,
    poll_seconds: float = 0.0,
    workers: int | None = None,
    limits: RequestLimits | None = None,
) -> web.Application:
    """The aiohttp application serving `registry`.

    batching: None/False for none, True for defaults, or {"max_batch_size": N, "timeout_ms": T}.
    poll_seconds: > 0 to refresh the registry in the background (new versions without restart).
    limits: the most instances and decoded input bytes one request may send (RequestLimits' defaults if None).
    """
    if batching is True:
        batching = {}
    elif batching is False:
        batching = None
    api = RestApi(registry, max_body_bytes, batching, poll_seconds, workers, limits or RequestLimits())
    app = web.Application(client_max_size=max_body_bytes, middlewares=[api.errors_as_json])
    model = "/v1/models/{name:[^/:]+}"
    for suffix in ("", r"/versions/{version:\d+}", "/labels/{label:[^/:]+}"):
        app.router.add_post(model + suffix + ":predict", api.predict)
        app.router.add_get(model + suffix, api.status)
        app.router.add_get(model + suffix + "/metadata", api.metadata)
    if poll_seconds > 0:
        app.cleanup_ctx.append(api.poll_models)
    app.on_cleanup.append(api.shutdown)
    app[REGISTRY_KEY] = registry
    app[API_KEY] = api
    return app
