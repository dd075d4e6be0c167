"""One module per modality. Nothing outside this package branches on "image vs text".

A modality object knows how to read its sources into records, turn records into a `tf.data`
pipeline of `(model_inputs, targets)`, build the model's inputs and pooled features on top of a
backbone, and describe an example for error analysis.
"""

from __future__ import annotations

from tfsft.config import RunConfig


def get_modality(config: RunConfig, run_dir=None):
    if config.task.modality == "text":
        from tfsft.tasks.text import TextModality

        return TextModality(config, run_dir)
    from tfsft.tasks.image import ImageModality

    return ImageModality(config, run_dir)


def shuffled_epochs(dataset, buffer_size: int, seed: int):
    """An endless stream of `dataset`, reshuffled every epoch with the seed `seed + epoch`.

    The order is a pure function of (seed, epoch): it does not depend on how many iterators were opened on the
    dataset before (tf.data's `reshuffle_each_iteration` does), so a resumed run, a run on several replicas and a
    one-device run all see the same examples in the same order.
    """
    import tensorflow as tf

    def one_epoch(epoch):
        return dataset.shuffle(buffer_size, seed=tf.cast(epoch, tf.int64) + seed, reshuffle_each_iteration=False)

    return tf.data.Dataset.range(2**62).flat_map(one_epoch)
