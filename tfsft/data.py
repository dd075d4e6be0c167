"""Shared data plumbing: reading tables, bad-record accounting, class index, targets and splits.

Modality-specific reading and tf.data pipelines live in `tfsft/modalities/`; this module only knows
records (inputs + raw labels + where they came from). It does not import TensorFlow.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfsft.config import RunConfig
from tfsft.errors import DataError
from tfsft.paths import resolve
from tfsft.tables import read_table, read_text_file, table_format  # noqa: F401  (the one table reader)
from tfsft.task_types import task_type as task_type_named

log = logging.getLogger(__name__)


@dataclass
class Records:
    """One split: model inputs by column, raw labels, and the source row of each record."""

    inputs: dict[str, list]
    labels: list
    rows: list  # table row numbers, or file paths inside an image folder
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> Records:
        indices = list(indices)
        return Records(
            inputs={k: [v[i] for i in indices] for k, v in self.inputs.items()},
            labels=[self.labels[i] for i in indices],
            rows=[self.rows[i] for i in indices],
            source=self.source,
        )


@dataclass
class BadRecord:
    source: str
    row: int
    reason: str
    value: str = ""
    lines: int = 1  # records lost: a quote that swallowed 30 lines lost 30 records, not one


@dataclass
class BadRecords:
    """Counts and keeps every rejected record; `data.on_bad_record` decides what happens next."""

    policy: str = "skip"
    items: list[BadRecord] = field(default_factory=list)
    fail_hint: str = "Fix or remove the record, or set data.on_bad_record: skip to count and skip such records."

    def add(self, source: str, row, reason: str, value: object = "", lines: int = 1) -> None:
        item = BadRecord(source, row, reason, str(value)[:200], lines)
        if self.policy == "fail":
            raise DataError(
                f"Bad record in '{source}' at {'row' if isinstance(row, int) else 'file'} {row}: {reason}"
                + (f" (value: {item.value!r})" if item.value else "")
                + ". "
                + self.fail_hint
            )
        self.items.append(item)

    def count(self, source: str) -> int:
        """Records lost from `source` (a record that swallowed several lines counts once per line)."""
        return sum(item.lines for item in self.items if item.source == source)

    def write(self, path: str | Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["source", "row", "reason", "value"])
            for item in self.items:
                writer.writerow([item.source, item.row, item.reason, item.value])


# ----------------------------------------------------------------------------------------- tables
def require_columns(path: str, columns: list[str], needed: dict[str, str]) -> None:
    """`needed` maps a config key (e.g. data.text_column) to the column it names."""
    if not columns:
        raise DataError(
            f"'{path}' has no columns: no header line (CSV/TSV) or no line holding a JSON object (JSONL). "
            f"Check the file's first lines and data.format."
        )
    for key, column in needed.items():
        if column not in columns:
            raise DataError(
                f"Column '{column}' (from {key}) is missing in '{path}'; its columns are {columns}. "
                f"Set {key} to one of them."
            )


def parse_label(raw: object, task_type: str, separator: str):
    """Raw label -> str (classification), list[str] (multilabel) or float (regression). None if empty/invalid."""
    if raw is None:
        return None
    return task_type_named(task_type).parse_label(raw, separator)


def row_label(record: dict, config: RunConfig, source: str, row: int, bad: BadRecords):
    """The parsed label of one table row (see `parse_label`); None, with the row counted as bad, if it has none."""
    data = config.data
    label = parse_label(record.get(data.label_column), config.task.type, data.label_separator)
    if label is None:
        bad.add(
            source, row, f"missing or invalid label in column '{data.label_column}'", record.get(data.label_column, "")
        )
    return label


# ----------------------------------------------------------------------------------------- classes and targets
@dataclass
class ClassIndex:
    names: list[str]

    @classmethod
    def from_labels(cls, labels: list, task_type: str, explicit: list[str] | None = None) -> ClassIndex:
        if not task_type_named(task_type).has_classes:
            return cls([])
        if explicit:
            return cls(list(explicit))
        seen = set()
        for label in labels:
            seen.update(label if isinstance(label, list) else [label])
        return cls(sorted(seen))

    def __len__(self) -> int:
        return len(self.names)

    def targets(self, labels: list, task_type: str) -> np.ndarray:
        if not task_type_named(task_type).has_classes:
            return np.asarray(labels, dtype=np.float32).reshape(-1, 1)
        index = {name: i for i, name in enumerate(self.names)}
        out = np.zeros((len(labels), len(self.names)), dtype=np.float32)
        for row, label in enumerate(labels):
            for name in label if isinstance(label, list) else [label]:
                out[row, index[name]] = 1.0
        return out

    def filter_unknown(self, records: Records, bad: BadRecords) -> Records:
        """Drop (and record) records whose label is not in the class list."""
        if not self.names:
            return records
        known = set(self.names)
        keep: list[int] = []
        unknown_names: dict[str, int] = {}
        for i, label in enumerate(records.labels):
            unknown = [name for name in (label if isinstance(label, list) else [label]) if name not in known]
            if unknown:
                bad.add(
                    records.source,
                    records.rows[i],
                    f"label {unknown[0]!r} is not in the class list {self.names}",
                    unknown[0],
                )
                for name in unknown:
                    unknown_names[name] = unknown_names.get(name, 0) + 1
            else:
                keep.append(i)
        if unknown_names:
            listed = ", ".join(f"{name!r} ({count})" for name, count in sorted(unknown_names.items()))
            log.warning(
                "%s: %d record(s) skipped whose labels are not in the class list %s: %s",
                records.source,
                len(records) - len(keep),
                self.names,
                listed,
            )
        return records.subset(keep)


# ----------------------------------------------------------------------------------------- splits
def _stratify_key(labels: list, task_type: str):
    if not task_type_named(task_type).single_label:
        return None
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return labels if counts.min() >= 2 else None


def split_off(records: Records, fraction: float, seed: int, task_type: str) -> tuple[Records, Records]:
    """Split `fraction` of the records off (stratified by class where possible), deterministically."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(records))
    stratify = _stratify_key(records.labels, task_type)
    try:
        keep, held = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:  # too few records per class for a stratified split
        keep, held = train_test_split(indices, test_size=fraction, random_state=seed)
    return records.subset(sorted(keep)), records.subset(sorted(held))


@dataclass
class Splits:
    train: Records
    validation: Records | None
    test: Records | None
    classes: ClassIndex
    bad: BadRecords

    def summary(self) -> str:
        parts = [f"train={len(self.train)}"]
        for name in ("validation", "test"):
            split = getattr(self, name)
            parts.append(f"{name}={len(split) if split is not None else 0}")
        if self.classes.names:
            parts.append(f"classes={self.classes.names}")
        if self.bad.items:
            parts.append(f"bad records skipped={len(self.bad.items)}")
        return ", ".join(parts)


def _check_bad_fraction(bad: BadRecords, source: str, kept: int, limit: float) -> None:
    rejected = bad.count(source)
    total = kept + rejected
    if total and rejected / total > limit:
        example = next(item for item in bad.items if item.source == source)
        raise DataError(
            f"{rejected} of {total} records in '{source}' are bad (more than data.max_bad_fraction={limit}); "
            f"first: {'line' if isinstance(example.row, int) else 'file'} {example.row}: {example.reason}. "
            f"Check the file and the column settings, or raise "
            f"data.max_bad_fraction."
        )


def load_splits(config: RunConfig, reader: Callable[[str, BadRecords], Records]) -> Splits:
    """Read train/validation/test with `reader(source_path, bad) -> Records` and build the class index."""
    data = config.data
    task_type = config.task.type
    bad = BadRecords(policy=data.on_bad_record)

    def read(location: str | None, split: str) -> Records | None:
        if not location:
            return None
        path = resolve(location, what=f"data.{split} path")
        if not Path(path).exists():
            raise DataError(
                f"data.{split} = '{location}' does not exist (resolved to '{Path(path).absolute()}'). "
                f"Check the path; relative paths are relative to the directory you run from."
            )
        records = reader(path, bad)
        _check_bad_fraction(bad, path, len(records), data.max_bad_fraction)
        if len(records) == 0:
            raise DataError(
                f"The {split} split from '{location}' has no usable records"
                + (f" ({bad.count(path)} bad, see bad_records.csv)" if bad.count(path) else "")
                + ". Point data."
                + split
                + " at a file with data, or check data.label_column / data.text_column."
            )
        return records

    read_train = read(data.train, "train")
    assert read_train is not None, "the schema requires data.train"
    classes = ClassIndex.from_labels(read_train.labels, task_type, data.classes)
    # Records whose label is unknown count as bad, per split, like unreadable ones (data.max_bad_fraction).
    train = _known_only(classes, read_train, bad, "train", data.max_bad_fraction)
    assert train is not None
    validation = _known_only(classes, read(data.validation, "validation"), bad, "validation", data.max_bad_fraction)
    test = _known_only(classes, read(data.test, "test"), bad, "test", data.max_bad_fraction)

    if test is None and data.split.test > 0:
        train, test = split_off(train, data.split.test, config.seed, task_type)
    if validation is None and data.split.validation > 0:
        fraction = data.split.validation / (1.0 - (data.split.test if data.test is None else 0.0))
        train, validation = split_off(train, min(fraction, 0.5), config.seed + 1, task_type)
    if data.max_train_examples and len(train) > data.max_train_examples:
        train, _ = split_off(train, 1.0 - data.max_train_examples / len(train), config.seed + 2, task_type)

    if classes.names:
        _require_every_class(train, classes, task_type)
    return Splits(train, validation, test, classes, bad)


def _known_only(classes: ClassIndex, split: Records | None, bad: BadRecords, name: str, limit: float) -> Records | None:
    if split is None:
        return None
    kept = classes.filter_unknown(split, bad)
    _check_bad_fraction(bad, split.source, len(kept), limit)
    if len(kept) == 0:
        labels = sorted({str(label) for label in split.labels})
        raise DataError(
            f"The {name} split ('{split.source}') has no records whose labels are in the class list {classes.names}; "
            f"its labels are {labels[:20]}. Check data.{name}, data.label_column and data.classes."
        )
    return kept


def _require_every_class(train: Records, classes: ClassIndex, task_type: str) -> None:
    counts = classes.targets(train.labels, task_type).sum(axis=0)
    if task_type_named(task_type).single_label and len(classes) < 2:
        raise DataError(
            f"Classification needs at least 2 classes, the training data has {classes.names}. "
            f"Check data.label_column, or use task.type: regression for numeric targets."
        )
    empty = [name for name, count in zip(classes.names, counts) if count == 0]
    if empty:
        raise DataError(
            f"Class(es) {empty} have no examples in the training split ({train.source}). Add examples for them, "
            f"or remove them from data.classes."
        )
