"""Shared fixtures: tiny real datasets (digit images, keyword-sentiment texts) and tiny backbone configs."""

from __future__ import annotations

import copy
import csv
import glob
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Test configs merge their overrides the way load_config merges --config files.
from tfsft.config import _deep_merge as deep_update

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parent.parent

TINY_BERT = {
    "architecture": "BertBackbone",
    "kwargs": {
        "num_layers": 2,
        "num_heads": 2,
        "hidden_dim": 32,
        "intermediate_dim": 64,
        "max_sequence_length": 64,
        "dropout": 0.0,
    },
}
TINY_RESNET = {
    "architecture": "ResNetBackbone",
    "kwargs": {
        "input_conv_filters": [64],
        "input_conv_kernel_sizes": [3],
        "stackwise_num_filters": [64, 32],
        "stackwise_num_blocks": [2, 1],
        "stackwise_num_strides": [1, 2],
        "block_type": "basic_block",
        "use_pre_activation": False,
    },
}


def pytest_collection_modifyitems(config, items):
    """Files with `slow` tests run first (a stable sort: the order inside each group is kept). Under pytest-xdist
    (`--dist loadfile`, see pyproject.toml) a file stays on one worker, so starting the longest files early lets
    the workers finish together instead of one running test_tune.py alone at the end."""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)


# ----------------------------------------------------------------------------------------- text data
POSITIVE = ["great", "love", "excellent", "happy", "wonderful", "amazing", "fantastic", "good"]
NEGATIVE = ["awful", "hate", "terrible", "sad", "horrible", "worst", "bad", "broken"]
NEUTRAL = ["the", "flight", "today", "is", "at", "gate", "my", "bag", "seat", "crew", "was", "on", "a", "we"]


def keyword_texts(n: int, seed: int) -> list[tuple[str, str]]:
    """Sentences whose label follows from one sentiment word among neutral filler: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        words = rng.sample(NEUTRAL, rng.randint(3, 8)) + [rng.choice(POSITIVE if label == "positive" else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def text_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("text")
    return {
        "train": str(write_csv(root / "train.csv", keyword_texts(256, 0))),
        "validation": str(write_csv(root / "validation.csv", keyword_texts(64, 1))),
        "test": str(write_csv(root / "test.csv", keyword_texts(64, 2))),
    }


def text_config(paths: dict, tmp_path: Path, **overrides) -> dict:
    base = {
        "name": "tiny_text",
        "output_dir": str(tmp_path / "runs"),
        "task": {"modality": "text", "type": "classification"},
        "data": {"train": paths["train"], "validation": paths["validation"], "test": paths["test"]},
        "text": {"vocabulary": "learn", "vocabulary_size": 200, "max_length": 32},
        "model": {"backbone": copy.deepcopy(TINY_BERT), "head": {"dropout": 0.0}},
        "optimizer": {"name": "adamw", "learning_rate": 3e-3},
        "schedule": {"name": "constant"},
        "training": {"epochs": 2, "batch_size": 32, "early_stopping": {"enabled": False}},
        "evaluation": {"worst_examples": 5},
    }
    return deep_update(base, overrides)


# ----------------------------------------------------------------------------------------- image data
def write_digit_folder(
    root: Path, digits: list[int], per_class: int | None = None, offset: int = 0, size: int = 32
) -> Path:
    """scikit-learn's bundled 8x8 digits, upscaled to size x size RGB PNGs, one folder per digit."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0 * 255.0).astype("uint8")
    counts: dict[int, int] = {}
    seen: dict[int, int] = {}
    for image, target in zip(images, bunch.target):
        target = int(target)
        if target not in digits:
            continue
        seen[target] = seen.get(target, 0) + 1
        if seen[target] <= offset:
            continue
        if per_class is not None and counts.get(target, 0) >= per_class:
            continue
        counts[target] = counts.get(target, 0) + 1
        big = np.kron(image, np.ones((size // 8, size // 8), dtype="uint8"))
        rgb = np.stack([big] * 3, axis=-1)
        folder = root / f"digit_{target}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{counts[target]:04d}.png").write_bytes(tf.io.encode_png(rgb).numpy())
    return root


@pytest.fixture(scope="session")
def digit_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("digits")
    return {
        "train": str(write_digit_folder(root / "train", [0, 1, 2], per_class=100)),
        "validation": str(write_digit_folder(root / "validation", [0, 1, 2], per_class=20, offset=100)),
        "test": str(write_digit_folder(root / "test", [0, 1, 2], per_class=20, offset=120)),
    }


def image_config(paths: dict, tmp_path: Path, **overrides) -> dict:
    base = {
        "name": "tiny_image",
        "output_dir": str(tmp_path / "runs"),
        "task": {"modality": "image", "type": "classification"},
        "data": {"train": paths["train"], "validation": paths["validation"], "test": paths["test"]},
        "image": {"size": [32, 32], "augment": {"flip": "none"}},
        "model": {"backbone": copy.deepcopy(TINY_RESNET), "head": {"dropout": 0.0}},
        "optimizer": {"name": "adam", "learning_rate": 1e-3, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        # From scratch on ~100 images, BatchNorm's moving statistics lag far behind the weights and inference
        # collapses to one class (plain Keras does the same); frozen BatchNorm is an identity here and learns fine.
        "freeze": {"train_batchnorm": False},
        "training": {"epochs": 2, "batch_size": 32, "early_stopping": {"enabled": False}},
        "evaluation": {"worst_examples": 5},
    }
    return deep_update(base, overrides)


@pytest.fixture(scope="session")
def image_run(tmp_path_factory, digit_data) -> Path:
    """A finished 2-epoch run of the tiny ResNet on digits, shared by the export tests (they only read it)."""
    from tfsft.trainer import train

    tmp = tmp_path_factory.mktemp("image_run")
    return train(validated(image_config(digit_data, tmp, training={"epochs": 2})), verbose=0).run_dir


# ----------------------------------------------------------------------------------------- serving
@pytest.fixture(scope="session")
def serving_base(tmp_path_factory) -> Path:
    """Tiny SavedModels laid out as a model base path (tests/servables.py), written once per session."""
    from servables import write_serving_base

    return write_serving_base(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="session")
def serving_registry(serving_base):
    """The serving base's models, loaded once and shared by the REST tests (they only read them)."""
    from tfsft.serving import ModelRegistry

    registry = ModelRegistry(base_path=serving_base)
    registry.refresh()
    return registry


# ----------------------------------------------------------------------------------------- helpers
def write_config(tmp_path: Path, config: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(module: str, *args: str, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=env
    )


def files_while_written(root: Path, pattern: str) -> list[Path]:
    """Files under `root` matching `pattern` ("**" allowed) while another process is writing there.

    TensorFlow writes each checkpoint into a `ckpt-N_temp` folder and renames it, and exports go through a `.tmp-*`
    folder the same way: a folder can vanish between being listed and being read. `Path.rglob` then raises
    FileNotFoundError (Python 3.11 only ignores PermissionError); `glob.glob` skips the vanished folder.
    """
    return sorted(Path(p) for p in glob.glob(str(root / pattern), recursive=True))


def saved_checkpoint_steps(root: Path) -> list[int]:
    """Steps of the `checkpoints/last/ckpt-N` checkpoints anywhere under `root`, read while a run may be writing."""
    return sorted(
        int(p.name.split("-")[1].split(".")[0]) for p in files_while_written(root, "**/checkpoints/last/ckpt-*.index")
    )


def saved_weights(run_dir: Path) -> dict:
    """Every weight of a run's saved model.keras, by its path in the file (numpy arrays)."""
    import zipfile

    import h5py

    weights = {}
    with zipfile.ZipFile(run_dir / "model.keras") as archive, archive.open("model.weights.h5") as raw:
        with h5py.File(raw, "r") as h5:
            h5.visititems(
                lambda name, obj: weights.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
    return weights


def validated(config: dict):
    from tfsft.config import validate

    return validate(config)
