"""Training batches of texts of similar length, each example once per epoch: windows sorted by length.

A batch is padded to its longest text, so in a shuffled stream of tweets (10-60 tokens) a third of the model's work
went to padding. `tf.data`'s `bucket_by_sequence_length`, used before, groups by length but parks up to batch_size -
1 examples per bucket: over the endless training stream a rare length waits until its bucket fills, across epochs,
and then trains as one batch of copies of the same few examples (or never, if training ends first). Here each
epoch's shuffled examples are cut into windows of `window_batches` batches; each window is sorted by token length
and cut into batches, which then come in an order shuffled within the window. Every example is seen once per epoch,
and an epoch is ceil(examples / batch size) batches, its last one short if need be. HF Trainer's `group_by_length`
sorts windows of 50 batches likewise (and runs their batches longest first). On the quickstart's tweets a batch then
carries ~1.08 x its real tokens instead of ~1.24 x with the length buckets of 16/32/48/... that came before, and a
training step on them takes ~10-15 % less time (docs/speed-history.md).
"""

from __future__ import annotations

import tensorflow as tf

# Training batches are cut to their longest text rounded up to this: it bounds the shapes an epoch meets (oneDNN
# builds its kernels per shape, ~0.1 ms each) at max_length / 4, for ~5 % more tokens than exact padding on tweets.
TRAINING_LENGTH_MULTIPLE = 4


def length_grouped_batches(
    examples: tf.data.Dataset, batch_size: int, window_batches: int, seed: int, length_of, epoch=0
) -> tf.data.Dataset:
    """Batches of `batch_size` from one epoch's shuffled `examples` (unbatched `(features, targets)` elements of one
    padded length), grouped by `length_of(features)` (a batch's lengths -> int32 [n]) within windows of
    `window_batches` batches.

    Every example comes out once; only the epoch's last batch may be short (it comes last). The batches are a pure
    function of the examples' order, `seed` and `epoch` (a resumed run skipping its first steps meets the same
    ones). `window_batches=1` keeps the examples' own order.
    """
    if window_batches <= 1:
        return examples.batch(batch_size)

    def sort_window(index, element):
        features, _ = element
        by_length = tf.argsort(length_of(features), stable=True)
        size = tf.size(by_length)
        full = size // batch_size
        # Whole batches of the sorted window come in a seeded order of their own, so that steps do not climb from
        # the shortest texts to the longest once per window; the epoch's short last batch stays last.
        window_seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * 2**32 + index])
        keys = tf.random.stateless_uniform([full], seed=window_seed)
        batch_order = tf.concat([tf.argsort(keys), tf.range(full, (size + batch_size - 1) // batch_size)], 0)
        position = tf.range(size)
        order = tf.gather(
            by_length, tf.gather(batch_order, position // batch_size) * batch_size + position % batch_size
        )
        return tf.nest.map_structure(lambda t: tf.gather(t, order), element)

    windows = examples.batch(batch_size * window_batches).enumerate()
    return windows.map(sort_window).unbatch().batch(batch_size)
