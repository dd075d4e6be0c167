"""`python -m tfsft.predict --model saved_models/<name>[/<version>] INPUT... [--input FILE] [--format jsonl|csv]`.

Runs an exported SavedModel (latest version by default) on raw inputs: texts given as arguments or read
from a text file (one per line) or a CSV/JSONL column; images given as files or a folder. Writes one
JSON line (or CSV row) per input with the class name, the scores and the input.

Like TF Serving, it needs only TensorFlow (+ TF Text for text models): no Keras model, no training code.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from tfsft.cli.common import positive_int, run_main
from tfsft.cli.startup import prepare_tensorflow_import
from tfsft.errors import TfsftError
from tfsft.modalities.predict_inputs import gather_inputs, holds_inputs
from tfsft.predict import load_signature, predict, resolve_version


def check_arguments(args) -> None:
    """Every argument, before the model is loaded."""
    import codecs

    if not args.model.exists():
        raise TfsftError(
            f"--model '{args.model}' does not exist. Give saved_models/<name> or "
            f"saved_models/<name>/<version> (export one with python -m tfsft.export --run RUN)."
        )
    if not args.model.is_dir():
        raise TfsftError(f"--model '{args.model}' is a file; give the model's folder (saved_models/<name>).")
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        raise TfsftError(
            f"--encoding '{args.encoding}' is not a known text encoding. Use e.g. utf-8 or latin-1."
        ) from None
    for file in args.input:
        path = Path(file)
        if not path.exists():
            raise TfsftError(f"--input '{file}' does not exist. Give a txt/csv/tsv/jsonl file (or images).")
        if path.is_dir() and not holds_inputs(path):
            raise TfsftError(f"--input '{file}' is a folder without images; give a txt/csv/tsv/jsonl file.")
    if args.output is not None:
        if args.output.is_dir():
            raise TfsftError(
                f"--output '{args.output}' is a folder; give a file path (e.g. {args.output}/predictions."
                f"{args.format})."
            )
        parent = args.output.parent
        if not parent.is_dir():
            raise TfsftError(f"--output '{args.output}': its folder '{parent}' does not exist. Create it first.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfsft.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, type=Path, help="saved_models/<name> or .../<name>/<version>")
    parser.add_argument("inputs", nargs="*", help="Texts, or image files/folders.")
    parser.add_argument("--input", action="append", default=[], help="A file of inputs (txt/csv/jsonl; images).")
    parser.add_argument("--column", help="Column of --input CSV/JSONL files holding the text (default: text).")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--encoding", default="utf-8", help="Text encoding of --input files (default utf-8).")
    parser.add_argument("--output", type=Path, help="Write here instead of stdout.")
    parser.add_argument("--verbose", action="store_true", help="Show TensorFlow's own start-up lines.")
    args = parser.parse_args(argv)
    prepare_tensorflow_import(args.verbose)

    def run():
        check_arguments(args)
        version_dir = resolve_version(args.model)
        _, fn = load_signature(version_dir, "serving_default")
        input_name = next(iter(fn.structured_input_signature[1]))
        items = gather_inputs(input_name, args.inputs, args.input, args.column, args.encoding)
        if not items:
            raise TfsftError("No inputs: pass texts/images as arguments or --input FILE.")
        try:
            out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
        except OSError as exc:
            raise TfsftError(f"--output '{args.output}' cannot be written: {exc.strerror}.") from None
        try:
            writer = None
            for row in predict(version_dir, items, args.batch_size):
                if args.format == "jsonl":
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                else:
                    flat = {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
                    if writer is None:
                        writer = csv.DictWriter(out, fieldnames=list(flat))
                        writer.writeheader()
                    writer.writerow(flat)
        finally:
            if args.output:
                out.close()

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
