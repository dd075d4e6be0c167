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

from tfsft.cli.common import positive_int, quiet_tensorflow, run_main
from tfsft.errors import TfsftError
from tfsft.predict import load_signature, predict, resolve_version

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}



class _FailOnBadLine:
    """Predictions must line up with the inputs: a bad line stops predict, naming it (no silent skipping)."""

    def add(self, source: str, row, reason: str, value: object = "", lines: int = 1) -> None:
        raise TfsftError(f"--input '{source}' line {row}: {reason}. Fix or remove that line; every line of an "
                         f"--input file is predicted.")


def _read_lines(path: Path, column: str | None, encoding: str = "utf-8") -> list[str]:
    """Texts of a txt (one per line), CSV/TSV (a column) or JSONL (a key) file, read by tfsft's table reader."""
    from tfsft.tables import read_table, read_text_file, table_format

    fmt = table_format(str(path), "auto") if path.suffix.lower() in (".csv", ".tsv", ".tab", ".jsonl", ".json") \
        else "txt"
    if fmt == "txt":
        return [line for line in read_text_file(str(path), encoding, "--encoding").splitlines() if line.strip()]
    column = column or "text"
    columns, rows = read_table(str(path), fmt, encoding, _FailOnBadLine(), encoding_key="--encoding")
    if column not in columns:
        raise TfsftError(f"Column '{column}' is not in '{path}' (columns: {columns}); name the text column with "
                         f"--column.")
    texts = []
    for number, record in rows:
        value = record.get(column)
        if not isinstance(value, str) or not value.strip():
            shown = "missing" if value is None else repr(value)
            raise TfsftError(f"--input '{path}' line {number}: '{column}' is {shown}, not a text. Fix or remove that "
                             f"line; every line of an --input file is predicted.")
        texts.append(value)
    return texts


# The first bytes of each image format TF decodes: a text or truncated file is named before any model work.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"RIFF", b"\xff\x0a",
                     b"\x00\x00\x00\x0cJXL ")


def _read_image(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TfsftError(f"Image '{path}' cannot be read: {exc.strerror}. Check its permissions.") from None
    if not data.startswith(_IMAGE_SIGNATURES):
        kind = "empty" if not data else "not an image (no JPEG/PNG/GIF/BMP/WebP header)"
        raise TfsftError(f"Image '{path}' is {kind}. Pass image files (or folders of them) to an image model.")
    return data


def gather_inputs(input_name: str, values: list[str], files: list[str], column: str | None,
                  encoding: str = "utf-8") -> list[tuple[str, bytes]]:
    """(display label, raw bytes) per input: the text itself, or an image file's bytes."""
    items: list[tuple[str, bytes]] = []
    if input_name == "image_bytes":
        paths: list[Path] = []
        for value in [*values, *files]:
            path = Path(value)
            if path.is_dir():
                paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            elif path.is_file():
                paths.append(path)
            else:
                raise TfsftError(f"Image '{value}' does not exist. Give image files or folders.")
        return [(str(p), _read_image(p)) for p in paths]
    items += [(text, text.encode("utf-8")) for text in values]
    for file in files:
        items += [(text, text.encode("utf-8")) for text in _read_lines(Path(file), column, encoding)]
    return items


def check_arguments(args) -> None:
    """Every argument, before the model is loaded."""
    import codecs

    if not args.model.exists():
        raise TfsftError(f"--model '{args.model}' does not exist. Give saved_models/<name> or "
                         f"saved_models/<name>/<version> (export one with python -m tfsft.export --run RUN).")
    if not args.model.is_dir():
        raise TfsftError(f"--model '{args.model}' is a file; give the model's folder (saved_models/<name>).")
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        raise TfsftError(f"--encoding '{args.encoding}' is not a known text encoding. Use e.g. utf-8 or "
                         f"latin-1.") from None
    for file in args.input:
        path = Path(file)
        if not path.exists():
            raise TfsftError(f"--input '{file}' does not exist. Give a txt/csv/tsv/jsonl file (or images).")
        if path.is_dir() and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*")):
            raise TfsftError(f"--input '{file}' is a folder without images; give a txt/csv/tsv/jsonl file.")
    if args.output is not None:
        if args.output.is_dir():
            raise TfsftError(f"--output '{args.output}' is a folder; give a file path (e.g. {args.output}/predictions."
                             f"{args.format}).")
        parent = args.output.parent
        if not parent.is_dir():
            raise TfsftError(f"--output '{args.output}': its folder '{parent}' does not exist. Create it first.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsft.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    quiet_tensorflow(args.verbose)

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
