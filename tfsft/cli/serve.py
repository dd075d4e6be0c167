"""`python -m tfsft.serve --model-base-path saved_models` — TF Serving's REST API over exported models.

A client written for TensorFlow Serving works unchanged against it: the same URLs (`:predict`,
model status, `/metadata`, `/versions/N`, `/labels/L`), request formats (row `instances` and
columnar `inputs`, `{"b64": ...}` binary values, `signature_name`), response documents
(`predictions` / `outputs`, float formatting, `_bytes` outputs as base64) and error codes.

It loads SavedModels with TensorFlow alone (a SavedModel on disk is the only contract with
training), serves the latest version by default, picks up new versions without a restart, runs
TF Serving warm-up records, and keeps TensorFlow work in thread pools so the event loop never
blocks. `--batching` merges concurrent requests into one model call. One request may send at most
`--max-instances` instances and `--max-input-bytes` of decoded input (HTTP 413 beyond). Work for a
client that disconnected is dropped before it reaches the model. SIGTERM or Ctrl-C stops accepting
connections, lets requests in flight finish for `--shutdown-grace-seconds`, then exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tfsft.cli.common import (
    ParagraphParser,
    bounded,
    non_empty,
    port,
    positive,
    run_main,
    setup_logging,
)
from tfsft.cli.startup import prepare_tensorflow_import
from tfsft.errors import TfsftError
from tfsft.serving.app import API_KEY, DEFAULT_MAX_BODY_BYTES, make_app
from tfsft.serving.errors import ServeConfigError
from tfsft.serving.limits import DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_INSTANCES, RequestLimits
from tfsft.serving.registry import ModelRegistry

log = logging.getLogger("tfsft.serve")

DEFAULT_SHUTDOWN_GRACE_SECONDS = 10.0


def build_parser() -> ParagraphParser:
    parser = ParagraphParser(
        prog="python -m tfsft.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model-base-path",
        type=non_empty,
        help="folder of models laid out <name>/<version>/saved_model.pb (default: saved_models)",
    )
    source.add_argument(
        "--model-config-file",
        type=non_empty,
        help="TF Serving models.config (text format); relative base_path values are relative to the file's folder",
    )
    parser.add_argument(
        "--host", type=non_empty, default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=port, default=8501, help="REST port, 1-65535 (default 8501, as TF Serving)")
    _add_request_limits(parser)
    _add_server_behaviour(parser)
    return parser


def _add_request_limits(parser: ParagraphParser) -> None:
    parser.add_argument(
        "--max-body-bytes",
        type=positive(int),
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies get 413 (default 64 MiB)",
    )
    parser.add_argument(
        "--max-instances",
        type=positive(int),
        default=DEFAULT_MAX_INSTANCES,
        help=f"most instances (rows) one request may send; more get 413 (default {DEFAULT_MAX_INSTANCES})",
    )
    parser.add_argument(
        "--max-input-bytes",
        type=positive(int),
        default=DEFAULT_MAX_INPUT_BYTES,
        help="most bytes of decoded input (strings, b64 data, numbers) one request may send; "
        "more get 413 (default 16 MiB)",
    )


def _add_server_behaviour(parser: ParagraphParser) -> None:
    parser.add_argument(
        "--poll-seconds",
        type=bounded(float, 0),
        default=2.0,
        help="how often to look for new or removed versions; 0 turns it off (default 2)",
    )
    parser.add_argument(
        "--shutdown-grace-seconds",
        type=bounded(float, 0, 3600),
        default=DEFAULT_SHUTDOWN_GRACE_SECONDS,
        help="on SIGTERM/Ctrl-C, how long requests in flight may finish before the server exits "
        f"(default {DEFAULT_SHUTDOWN_GRACE_SECONDS:g})",
    )
    parser.add_argument(
        "--workers",
        type=bounded(int, 1, 256),
        default=None,
        help="threads running model calls (default: 2-4, by CPU count)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default, as in TF Serving: a line per request costs throughput)",
    )
    parser.add_argument("--batching", action="store_true", help="merge concurrent predict requests into one call")
    parser.add_argument("--max-batch-size", type=positive(int), default=64, help="rows per merged call (default 64)")
    parser.add_argument(
        "--batch-timeout-ms",
        type=bounded(float, 0, 60000, low_open=True),
        default=2.0,
        help="how long a request waits for others to merge with (default 2)",
    )


def registry_from_args(args) -> ModelRegistry:
    if args.model_config_file:
        config = Path(args.model_config_file)
        if not config.is_file():
            raise ServeConfigError(
                f"The model config file '{config}' does not exist. Pass the models.config "
                f"that python -m tfsft.export writes next to the models, or use --model-base-path."
            )
        return ModelRegistry(model_config_file=config)
    base = Path(args.model_base_path or "saved_models")
    if not base.is_dir():
        raise ServeConfigError(
            f"The model base path '{base}' is not a folder. Pass --model-base-path with "
            f"models exported as <name>/<version>/saved_model.pb (python -m tfsft.export)."
        )
    return ModelRegistry(base_path=base)


class _Interrupted(TfsftError):
    exit_code = 130


def load_models(args) -> ModelRegistry:
    registry = registry_from_args(args)
    try:
        changes = registry.refresh()
    except KeyboardInterrupt:  # Ctrl-C while loading; once serving, run_app handles it and exits cleanly
        raise _Interrupted("interrupted while loading models.") from None
    for change in changes:
        log.info(change)
    if not any(registry.models.values()):
        where = args.model_config_file or args.model_base_path or "saved_models"
        failed = sum(len(f) for f in registry.failures.values())
        reason = (
            f"{failed} version(s) failed to load (see the errors above)"
            if failed
            else "no <name>/<version>/saved_model.pb folders were found"
        )
        raise ServeConfigError(
            f"No model to serve from '{where}': {reason}. "
            f"Export one with python -m tfsft.export, then start the server again."
        )
    return registry


def serve(args) -> None:
    from aiohttp import web

    registry = load_models(args)
    batching = {"max_batch_size": args.max_batch_size, "timeout_ms": args.batch_timeout_ms} if args.batching else None
    limits = RequestLimits(args.max_instances, args.max_input_bytes)
    app = make_app(registry, args.max_body_bytes, batching, args.poll_seconds, args.workers, limits)
    try:
        # run_app turns SIGTERM/SIGINT into a graceful exit: the listening socket closes, handlers in flight
        # get shutdown_timeout to finish, then are cancelled (which drops their queued model calls).
        web.run_app(
            app,
            host=args.host,
            port=args.port,
            print=lambda message: log.info(message.strip()),
            access_log=logging.getLogger("aiohttp.access") if args.access_log else None,
            shutdown_timeout=args.shutdown_grace_seconds,
            handler_cancellation=True,
        )
    except OSError as exc:
        raise ServeConfigError(
            f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. Another server "
            f"may be using the port; pick a free one with --port."
        ) from None
    _exit_now_if_busy(app[API_KEY].busy_threads, args.shutdown_grace_seconds)


def _exit_now_if_busy(busy: int, grace: float) -> None:
    """A TensorFlow call cannot be interrupted, and Python would wait for its thread at exit: after the grace
    period, exit without it rather than hang for as long as the call takes."""
    if not busy:
        return
    log.warning("Stopped: %d model call(s) still running after the %g s grace period were abandoned.", busy, grace)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # every argument checked before anything is loaded
    prepare_tensorflow_import()  # before TensorFlow is first imported (lazily, by the registry)
    setup_logging()
    return run_main(lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
