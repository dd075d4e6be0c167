"""A training split's cache filled ahead (`CacheFills`, started by the trainer while the first step is traced)
serves the same stream without computing its examples again; only a cache the first batch needs whole is filled."""

from __future__ import annotations

from types import SimpleNamespace

import tensorflow as tf

from tfsft.modalities.base import CacheFills, Modality


def _counted_examples(count: int):
    """`range(count)`, counting every example the pipeline computes (what tokenizing or decoding would cost)."""
    computed = tf.Variable(0, dtype=tf.int64)

    def compute(i):
        with tf.control_dependencies([computed.assign_add(1)]):
            return tf.identity(i)

    return tf.data.Dataset.range(count).map(compute), computed


def _epochs(examples, count, cache_fills, shuffle_buffer=10_000):
    owner = SimpleNamespace(config=SimpleNamespace(seed=5, data=SimpleNamespace(shuffle_buffer=shuffle_buffer)))
    return Modality.epochs(owner, examples, count, training=True, cache=True, cache_fills=cache_fills)


def test_a_cache_filled_ahead_serves_the_same_stream_without_computing_it_again():
    examples, computed = _counted_examples(20)
    fills = CacheFills()
    stream = _epochs(examples, 20, fills)
    with fills.filling():  # as the trainer runs fit: started on entry, waited for on exit
        pass
    assert int(computed.numpy()) == 20  # the fill computed every example once

    three_epochs = [int(x) for x in stream.take(60)]

    assert int(computed.numpy()) == 20  # ... and training read them from memory
    plain_examples, _ = _counted_examples(20)
    assert three_epochs == [int(x) for x in _epochs(plain_examples, 20, None).take(60)]  # same order as unfilled
    assert sorted(three_epochs[:20]) == list(range(20))


def test_a_stream_opened_before_the_fill_ends_still_sees_every_example_once_per_epoch():
    examples, _ = _counted_examples(200)
    fills = CacheFills()
    stream = _epochs(examples, 200, fills)
    fills.start()
    two_epochs = [int(x) for x in stream.take(400)]  # races the fill: whoever finishes first completes the cache
    fills.wait()

    assert sorted(two_epochs[:200]) == sorted(two_epochs[200:]) == list(range(200))


def test_only_a_cache_the_first_batch_needs_whole_is_filled():
    examples, computed = _counted_examples(20)
    fills = CacheFills()
    stream = _epochs(examples, 20, fills, shuffle_buffer=8)  # the first batch needs 8 examples, not 20
    fills.start()
    fills.wait()

    assert int(computed.numpy()) == 0
    assert len([int(x) for x in stream.take(20)]) == 20
