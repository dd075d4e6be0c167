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
