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
from typing import Iterator

from tfsft.errors import TfsftError
from tfsft.versions import SAVED_MODEL_FILE, latest_version_dir

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


def resolve_version(model: Path) -> Path:
    """A version folder: `model` itself if it holds saved_model.pb, else its highest integer sub-folder."""
    if (model / SAVED_MODEL_FILE).exists():
        return model
    latest = latest_version_dir(model)
    if latest is None:
        raise TfsftError(f"--model '{model}' holds no SavedModel: give saved_models/<name> (its latest version is "
                         f"used) or saved_models/<name>/<version>. Export one with python -m tfsft.export --run RUN.")
    return latest


def load_signature(version_dir: Path, signature: str):
    import tensorflow as tf

    try:
        import tensorflow_text  # noqa: F401  (ops used by in-graph tokenizers)
    except ImportError:
        pass
    loaded = tf.saved_model.load(str(version_dir))
    if signature not in loaded.signatures:
        raise TfsftError(f"Signature '{signature}' is not in {version_dir}; it has {sorted(loaded.signatures)}.")
    fn = loaded.signatures[signature]
    return loaded, fn


def _read_lines(path: Path, column: str | None) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            column = column or "text"
            if column not in (reader.fieldnames or []):
                raise TfsftError(f"Column '{column}' is not in '{path}' (columns: {reader.fieldnames}); use --column.")
            return [row[column] for row in reader]
    if suffix == ".jsonl":
        column = column or "text"
        return [json.loads(line)[column] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gather_inputs(input_name: str, values: list[str], files: list[str], column: str | None) -> list[tuple[str, bytes]]:
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
        return [(str(p), p.read_bytes()) for p in paths]
    items += [(text, text.encode("utf-8")) for text in values]
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise TfsftError(f"--input '{file}' does not exist.")
        items += [(text, text.encode("utf-8")) for text in _read_lines(path, column)]
    return items


def predict(version_dir: Path, items: list[tuple[str, bytes]], batch_size: int = 64,
            signature: str = "serving_default") -> Iterator[dict]:
    import tensorflow as tf

    _, fn = load_signature(version_dir, signature)
    inputs = list(fn.structured_input_signature[1])
    if len(inputs) != 1:
        raise TfsftError(f"The model's {signature} takes {inputs}; predict supports single-input models.")
    name = inputs[0]
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        try:
            outputs = fn(**{name: tf.constant([raw for _, raw in batch])})
        except tf.errors.InvalidArgumentError as exc:
            raise TfsftError(f"The model rejected inputs {start}..{start + len(batch) - 1}: "
                             f"{exc.message.splitlines()[0]}. Check they are valid {name}.") from None
        arrays = {k: v.numpy() for k, v in outputs.items()}
        for i, (label, _) in enumerate(batch):
            row = {"input": label}
            for key, array in sorted(arrays.items()):
                value = array[i]
                value = value.tolist() if hasattr(value, "tolist") else value
                row[key] = _decode(value)
            yield row


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def main(argv=None) -> int:
    from tfsft.cli import quiet_tensorflow, run_main

    parser = argparse.ArgumentParser(prog="python -m tfsft.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="saved_models/<name> or .../<name>/<version>")
    parser.add_argument("inputs", nargs="*", help="Texts, or image files/folders.")
    parser.add_argument("--input", action="append", default=[], help="A file of inputs (txt/csv/jsonl; images).")
    parser.add_argument("--column", help="Column of --input CSV/JSONL files holding the text (default: text).")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, help="Write here instead of stdout.")
    args = parser.parse_args(argv)
    quiet_tensorflow()

    def run():
        version_dir = resolve_version(args.model)
        _, fn = load_signature(version_dir, "serving_default")
        input_name = next(iter(fn.structured_input_signature[1]))
        items = gather_inputs(input_name, args.inputs, args.input, args.column)
        if not items:
            raise TfsftError("No inputs: pass texts/images as arguments or --input FILE.")
        out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
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
