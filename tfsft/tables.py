"""The one reader for tables (CSV, TSV, JSONL): explicit quoting rules per format, no record lost silently.

- CSV follows the double-quote rules (a quoted field may hold commas, quotes and line breaks). A quoted field
  that spans lines is checked: when the lines it swallowed look like rows of their own, or the record does
  not have the header's number of fields, it is a bad record named by the line where the quote *starts*, and it
  counts as every line it swallowed towards `data.max_bad_fraction`.
- TSV has no quoting by default: a `"` is an ordinary character (`data.quoting: double_quote` turns the rules on).
- JSONL: one JSON object per line; the columns come from the first line that parses, a broken line is a bad
  record wherever it is.
Row numbers are the 1-based file lines where a record starts. Field sizes are capped (FIELD_LIMIT characters)
with an error that names the line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from tfsft.errors import DataError

log = logging.getLogger(__name__)

# Longest field read (characters). Texts this long are truncated by the tokenizer anyway; anything longer is
# almost always a quote opened and never closed.
FIELD_LIMIT = 16 * 1024 * 1024
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the line ends the csv module counts in line_num


def table_format(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    suffix = Path(path).suffix.lower()
    return {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix, "csv")


def uses_quotes(fmt: str, quoting: str) -> bool:
    """`data.quoting`: auto = double-quote rules for CSV, none for TSV."""
    if quoting == "auto":
        return fmt == "csv"
    return quoting == "double_quote"


def read_text_file(path: str, encoding: str, encoding_key: str = "data.encoding") -> str:
    if Path(path).is_dir():
        raise DataError(f"'{path}' is a folder; give a data file (CSV/TSV/JSONL) here.")
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(
            f"Cannot read data file '{path}': {exc.strerror}. Check the path and its permissions."
        ) from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"Data file '{path}' is not valid {encoding}: byte 0x{bad} on line {line} cannot be decoded. "
            f"Re-save the file as UTF-8, or set {encoding_key} to its real encoding (e.g. latin-1, cp1252)."
        ) from None
    except LookupError:
        raise DataError(
            f"{encoding_key} = '{encoding}' is not a known text encoding. Use e.g. utf-8 or latin-1."
        ) from None
    return text.lstrip("\ufeff")


def read_table(
    path: str, fmt: str, encoding: str, bad, quoting: str = "auto", encoding_key: str = "data.encoding"
) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """Column names and (start line, record) pairs of a CSV/TSV/JSONL file; bad records go to `bad`."""
    text = read_text_file(path, encoding, encoding_key)
    if fmt == "jsonl":
        columns, rows = _read_jsonl(path, text, bad)
    else:
        columns, rows = _read_delimited(path, text, "\t" if fmt == "tsv" else ",", uses_quotes(fmt, quoting), bad)
    return columns, iter(rows)


def _read_jsonl(path: str, text: str, bad) -> tuple[list[str], list[tuple[int, dict]]]:
    columns: list[str] | None = None
    rows = []
    # Only \n ends a JSONL line: U+2028 and friends are legal inside JSON strings (str.splitlines would cut there).
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.add(path, number, f"invalid JSON ({exc.msg} at column {exc.colno})", line)
            continue
        if not isinstance(record, dict):
            bad.add(path, number, f"the line holds a JSON {type(record).__name__}, not an object", line)
            continue
        if columns is None:
            columns = list(record)
        rows.append((number, record))
    return columns or [], rows


def _read_delimited(path: str, text: str, delimiter: str, quotes: bool, bad) -> tuple[list[str], list]:
    csv.field_size_limit(FIELD_LIMIT)
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quotes else csv.QUOTE_NONE
    )
    lines = _LINE_BREAK.split(text)
    columns: list[str] | None = None
    rows, multi_line, end = [], [], 0
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(_csv_error(path, start, reader.line_num, exc, quotes)) from None
        end = reader.line_num
        if not any(field.strip() for field in fields):
            continue  # blank line
        if columns is None:
            columns = [c.strip() for c in fields]
            continue
        while len(fields) > len(columns) and not fields[-1].strip():
            fields.pop()  # trailing empty fields ("a,b,")
        span = end - start + 1
        swallowed = span > 1 and (
            len(fields) != len(columns) or _swallowed_rows(lines[start:end], delimiter, len(columns)) >= 2
        )
        if swallowed:
            _count_swallowed(path, start, end, lines, bad)
            continue
        if len(fields) != len(columns):
            hint = "quote fields that contain a comma" if delimiter == "," else "a tab inside a field?"
            bad.add(
                path,
                start,
                f"{len(fields)} fields where the header has {len(columns)} ({hint})",
                delimiter.join(fields),
            )
            continue
        if span > 1:
            multi_line.append(start)
        rows.append((start, dict(zip(columns, fields))))
    if multi_line:
        log.warning(
            "%s: %d record(s) hold line breaks inside quoted fields (the first starts on line %d); each was "
            "read as one record.",
            path,
            len(multi_line),
            multi_line[0],
        )
    return columns or [], rows


def _count_swallowed(path: str, start: int, end: int, lines: list[str], bad) -> None:
    """A quoted field that runs from line `start` to `end` over what look like rows: one bad record, not many."""
    span = end - start + 1
    bad.add(
        path,
        start,
        f"a quoted field opened on line {start} runs over {span} lines to line {end}, "
        f"swallowing what look like rows (a quote that is never closed?)",
        lines[start - 1],
        lines=span,
    )
    log.warning(
        "%s: a quoted field opened on line %d swallows lines %d-%d; those lines are not read as records.",
        path,
        start,
        start + 1,
        end,
    )


def _swallowed_rows(lines: list[str], delimiter: str, width: int) -> int:
    """How many of `lines` (the 2nd.. lines of one multi-line record) would be complete rows on their own."""
    count = 0
    for line in lines:
        fields = next(csv.reader([line], delimiter=delimiter, quoting=csv.QUOTE_NONE), [])
        if len(fields) == width and fields[-1].strip():
            count += 1
    return count


def _csv_error(path: str, start: int, line: int, exc: csv.Error, quotes: bool) -> str:
    if "field larger than field limit" in str(exc):
        cause = (
            f"a quote opened on line {start} is never closed, or a field really is that long"
            if quotes
            else "a field really is that long"
        )
        return (
            f"'{path}': the record starting on line {start} has a field longer than {FIELD_LIMIT} characters "
            f"(read up to line {line}): {cause}. Close the quote or shorten the field"
            + (", or set data.quoting: none if the file uses no quoting." if quotes else ".")
        )
    return f"'{path}' cannot be read as a table at line {start}: {exc}. Fix that line (or the ones just before it)."
