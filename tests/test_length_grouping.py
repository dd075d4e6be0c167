"""Training batches grouped by length within windows of each epoch (tfsft/modalities/length_grouping.py): every
example once per epoch, batches of similar lengths in a shuffled order, the same stream on every pass and after a
skip."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from tfsft.config import validate
from tfsft.errors import ConfigError
from tfsft.modalities.base import shuffled_epochs
from tfsft.modalities.length_grouping import length_grouped_batches

MAX_LENGTH = 64


def _examples(count: int, seed: int = 0) -> tf.data.Dataset:
    """(features with a padding mask of a random length, example id) pairs, as the text modality's stream holds."""
    lengths = np.random.default_rng(seed).integers(1, MAX_LENGTH + 1, size=count)
    masks = np.arange(MAX_LENGTH)[None, :] < lengths[:, None]
    return tf.data.Dataset.from_tensor_slices(({"padding_mask": masks}, np.arange(count)))


def _lengths(features):
    return tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32), axis=1)


def _grouped_epochs(count, batch, window, seed):
    """The training stream as the text modality builds it: each epoch shuffled, then grouped."""

    def grouped(shuffled, epoch):
        return length_grouped_batches(shuffled, batch, window, seed, _lengths, epoch)

    return shuffled_epochs(_examples(count), count, seed, grouped)


def _batches(dataset, steps):
    return [(_lengths(f).numpy(), ids.numpy()) for f, ids in dataset.take(steps)]


def test_every_example_once_per_epoch_and_batches_of_similar_length():
    count, batch, window = 478, 8, 5  # an epoch is 60 batches, the last of 6 examples: 12 windows
    batches = _batches(_grouped_epochs(count, batch, window, seed=3), 3 * 60)
    assert [len(ids) for _, ids in batches] == ([batch] * 59 + [6]) * 3
    for epoch in range(3):
        seen = np.concatenate([ids for _, ids in batches[epoch * 60 : (epoch + 1) * 60]])
        assert sorted(seen) == list(range(count)), f"epoch {epoch} did not see each example exactly once"
    stream = shuffled_epochs(_examples(count), count, seed=3)

    def padding_overhead(groups):
        return sum(lengths.max() * len(lengths) for lengths, _ in groups) / sum(lengths.sum() for lengths, _ in groups)

    plain = _batches(stream.batch(batch), 3 * count // batch)
    assert padding_overhead(batches) < 1.25 < 1.5 < padding_overhead(plain)


def test_batches_come_in_a_shuffled_order_within_each_window():
    count, batch, window = 400, 10, 20
    batches = _batches(_grouped_epochs(count, batch, window, seed=0), window)
    longest = [lengths.max() for lengths, _ in batches]
    assert sorted(longest) != longest and sorted(longest, reverse=True) != longest
    # Sorted inside the window: no two batches overlap in length beyond a shared boundary value.
    spans = sorted((lengths.min(), lengths.max()) for lengths, _ in batches)
    assert all(previous[1] <= following[0] for previous, following in zip(spans, spans[1:]))


def test_the_stream_is_the_same_on_every_pass_after_a_skip_and_for_the_same_seed():
    count, batch, window = 60, 6, 4  # 10 batches an epoch: windows of 4, 4 and 2 batches
    grouped = _grouped_epochs(count, batch, window, seed=1)
    first = [ids for _, ids in _batches(grouped, 40)]
    again = [ids for _, ids in _batches(grouped, 40)]
    resumed = [ids for _, ids in _batches(grouped.skip(17), 23)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(np.array_equal(a, b) for a, b in zip(first[17:], resumed))
    assert not all(np.array_equal(a, b) for a, b in zip(first[:10], first[10:20]))  # each epoch its own batches
    other_seed = [ids for _, ids in _batches(_grouped_epochs(count, batch, window, seed=2), 40)]
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_seed))


def test_a_window_of_one_batch_keeps_the_streams_order():
    stream = _examples(50)
    grouped = _batches(length_grouped_batches(stream, 8, 1, seed=0, length_of=_lengths), 7)
    assert np.array_equal(np.concatenate([ids for _, ids in grouped]), np.arange(50))


def test_an_epoch_gives_every_example_with_the_short_batch_last():
    # 3 full windows of 4 batches of 5, then 7 examples: a window of one full batch and a short one.
    batches = _batches(length_grouped_batches(_examples(67), 5, 4, seed=0, length_of=_lengths), 100)
    assert [len(ids) for _, ids in batches] == [5] * 13 + [2]
    assert sorted(np.concatenate([ids for _, ids in batches])) == list(range(67))
    counts = collections.Counter(len(ids) for _, ids in batches)
    assert counts[2] == 1


def test_the_retired_bucket_boundaries_key_says_what_replaced_it():
    with pytest.raises(ConfigError, match=r"text.bucket_boundaries' is no longer a config key.*length_grouping"):
        validate(
            {
                "task": {"modality": "text"},
                "data": {"train": "x.csv"},
                "model": {"backbone": {"preset": "bert_tiny_en_uncased"}},
                "text": {"bucket_boundaries": [16, 32]},
            }
        )
