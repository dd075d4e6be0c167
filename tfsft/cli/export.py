"""`python -m tfsft.export --run runs/<name>/<id> [--base-path saved_models] [--name N] [--version V] [--format onnx]`.

Exports a finished run as a versioned TF Serving SavedModel (preprocessing inside the graph, verified in a fresh
process) or, with `--format onnx`, as an ONNX model with its preprocessing files (see tfsft/export.py and
tfsft/onnx_export.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tfsft.export import export_run
from tfsft.export_checks import run_state


def main(argv=None) -> int:
    import argparse

    from tfsft.cli import prepare_tensorflow_import, run_main, setup_logging
    from tfsft.cli.common import ParagraphParser, model_name, non_empty, version_number

    parser = ParagraphParser(
        prog="python -m tfsft.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, type=non_empty, help="A finished run directory (runs/<name>/<id>).")
    parser.add_argument(
        "--base-path", default="saved_models", type=non_empty, help="Model base path (default saved_models/)."
    )
    parser.add_argument("--name", type=model_name, help="Model name, a single folder name (default: the run's name).")
    parser.add_argument(
        "--version", type=version_number, help="Version number, a positive integer (default: the next free one)."
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="Export a run whose status.json does not say completed (its state is printed).",
    )
    parser.add_argument("--no-verify", action="store_true", help="Skip the fresh-process reload check.")
    parser.add_argument(
        "--format",
        choices=("savedmodel", "onnx"),
        default="savedmodel",
        help="savedmodel (default): TF Serving, preprocessing inside. onnx: <name>-onnx/<version>/"
        "model.onnx for Triton/onnxruntime, preprocessing left to the client (tfsft.onnx_export).",
    )
    args = parser.parse_args(argv)
    if args.format == "onnx" and args.no_verify:
        parser.error("--no-verify is for --format savedmodel; the ONNX export is always verified.")
    prepare_tensorflow_import()
    setup_logging()

    def run():
        if args.force:
            state = run_state(Path(args.run))
            print(
                f"--force: exporting the run '{args.run}' in state '{state or 'unknown (no status.json)'}'.",
                file=sys.stderr,
                flush=True,
            )
        if args.format == "onnx":
            from tfsft.onnx_export import export_onnx

            target = export_onnx(args.run, args.base_path, args.name, args.version, force=args.force)
        else:
            target = export_run(
                args.run, args.base_path, args.name, args.version, verify=not args.no_verify, force=args.force
            )
        print(f"Exported {target}")

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
