"""The raw inputs `python -m tfsft.predict` sends to an exported model, read for each modality's serving input.

TF-free (predict needs only TensorFlow at call time): an exported model's 'serving_default' takes `text`
(strings) or `image_bytes` (encoded images); which one decides how command-line values and --input files
are read. This is the only place outside the `Modality` classes that knows the two serving inputs apart.
"""

from __future__ import annotations

from pathlib import Path

from tfsft.errors import TfsftError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
IMAGE_INPUT = "image_bytes"  # ImageModality.serving_signatures()["serving_default"]


class _FailOnBadLine:
    """Predictions must line up with the inputs: a bad line stops predict, naming it (no silent skipping)."""

    def add(self, source: str, row, reason: str, value: object = "", lines: int = 1) -> None:
        raise TfsftError(
            f"--input '{source}' line {row}: {reason}. Fix or remove that line; every line of an "
            f"--input file is predicted."
        )


def _read_lines(path: Path, column: str | None, encoding: str = "utf-8") -> list[str]:
    """Texts of a txt (one per line), CSV/TSV (a column) or JSONL (a key) file, read by tfsft's table reader."""
    from tfsft.tables import read_table, read_text_file, table_format

    fmt = (
        table_format(str(path), "auto") if path.suffix.lower() in (".csv", ".tsv", ".tab", ".jsonl", ".json") else "txt"
    )
    if fmt == "txt":
        return [line for line in read_text_file(str(path), encoding, "--encoding").splitlines() if line.strip()]
    column = column or "text"
    columns, rows = read_table(str(path), fmt, encoding, _FailOnBadLine(), encoding_key="--encoding")
    if column not in columns:
        raise TfsftError(
            f"Column '{column}' is not in '{path}' (columns: {columns}); name the text column with --column."
        )
    texts = []
    for number, record in rows:
        value = record.get(column)
        if not isinstance(value, str) or not value.strip():
            shown = "missing" if value is None else repr(value)
            raise TfsftError(
                f"--input '{path}' line {number}: '{column}' is {shown}, not a text. Fix or remove that "
                f"line; every line of an --input file is predicted."
            )
        texts.append(value)
    return texts


# The first bytes of each image format TF decodes: a text or truncated file is named before any model work.
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"RIFF",
    b"\xff\x0a",
    b"\x00\x00\x00\x0cJXL ",
)


def _read_image(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TfsftError(f"Image '{path}' cannot be read: {exc.strerror}. Check its permissions.") from None
    if not data.startswith(_IMAGE_SIGNATURES):
        kind = "empty" if not data else "not an image (no JPEG/PNG/GIF/BMP/WebP header)"
        raise TfsftError(f"Image '{path}' is {kind}. Pass image files (or folders of them) to an image model.")
    return data


def gather_inputs(
    input_name: str, values: list[str], files: list[str], column: str | None, encoding: str = "utf-8"
) -> list[tuple[str, bytes]]:
    """(display label, raw bytes) per input: the text itself, or an image file's bytes."""
    items: list[tuple[str, bytes]] = []
    if input_name == IMAGE_INPUT:
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


def holds_inputs(folder: Path) -> bool:
    """Whether a folder given to predict holds anything it can predict (image files, at any depth)."""
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*"))
