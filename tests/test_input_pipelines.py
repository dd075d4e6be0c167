"""Every pipeline a modality hands to Keras runs without tf.data's autotuning thread and yields what it yielded with
it. (With TensorFlow 2.21, deleting an iterator in a training process waited for that thread's next round: `fit`
returned 44 s after its last step in a measured run. The wait depends on timing, so it is measured in the README,
not asserted here.)"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from conftest import image_config, text_config, validated
from tfsft.data import BadRecords


def with_autotune_thread(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = True
    return dataset.with_options(options)


def batches(dataset: tf.data.Dataset, count: int | None = None) -> list:
    taken = dataset.take(count) if count else dataset
    return [tf.nest.map_structure(np.asarray, batch) for batch in taken]


def assert_same_batches(got: list, expected: list) -> None:
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        tf.nest.assert_same_structure(a, b)
        for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
            np.testing.assert_array_equal(x, y)


def prepared_modality(config: dict, tmp_path, split: str):
    from tfsft.modalities import get_modality

    modality = get_modality(validated(config))
    records = modality.read(config["data"][split], BadRecords())
    modality.prepare(records, tmp_path)
    targets = np.eye(10, dtype=np.float32)[np.arange(len(records)) % 10]
    return modality, records, targets


def test_text_pipelines_run_without_the_autotune_thread_and_yield_the_same_batches(tmp_path, text_data):
    modality, records, targets = prepared_modality(text_config(text_data, tmp_path), tmp_path, "train")
    pipelines = {
        "training stream": (modality.dataset(records, targets, training=True, batch_size=8), 4),
        "evaluation": (modality.dataset(records, targets, training=False, batch_size=8), None),
        "validation": (modality.evaluation_batches(records, targets, batch_size=8), None),
        "ordered": (modality.ordered_dataset(records, targets, np.arange(len(records))[::-1], 8), None),
    }
    for name, (dataset, count) in pipelines.items():
        assert dataset.options().autotune.enabled is False, name
        assert_same_batches(batches(dataset, count), batches(with_autotune_thread(dataset), count))


def test_the_trainers_streams_run_without_the_autotune_thread(tmp_path, text_data):
    from tfsft.modalities.base import CacheFills
    from tfsft.trainer import _datasets, prepare

    config = validated(text_config(text_data, tmp_path, training={"class_weights": "balanced"}))
    prepared = prepare(config, resume="never")
    train_stream, _, validation = _datasets(prepared, CacheFills())
    assert train_stream.options().autotune.enabled is False
    assert validation.options().autotune.enabled is False


def test_image_pipelines_run_without_the_autotune_thread_and_yield_the_same_batches(tmp_path, digit_data):
    modality, records, targets = prepared_modality(image_config(digit_data, tmp_path), tmp_path, "test")
    training = modality.dataset(records, targets, training=True, batch_size=8)
    assert training.options().autotune.enabled is False  # its augmentation draws new numbers on every pass
    for dataset in (
        modality.dataset(records, targets, training=False, batch_size=8),
        modality.evaluation_batches(records, targets, batch_size=8),
    ):
        assert dataset.options().autotune.enabled is False
        assert_same_batches(batches(dataset), batches(with_autotune_thread(dataset)))
