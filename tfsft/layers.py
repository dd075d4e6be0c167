"""The few Keras layers tfsft adds to a backbone. Registered, so `.keras` files load in safe mode."""

from __future__ import annotations

import keras
from keras import ops

# Per-channel (mean, std) in 0..255 pixel units, and whether channels are flipped to BGR, per convention.
_NORMALIZATION = {
    "caffe": ((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), True),
    "torch": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255), False),
    "tf": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5), False),
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0), False),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),
}


@keras.saving.register_keras_serializable(package="tfsft")
class ImageNormalization(keras.layers.Layer):
    """Maps 0..255 RGB pixels to what a backbone expects (`caffe`, `torch`, `tf`, `unit`, `none`)."""

    def __init__(self, mode: str = "unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in _NORMALIZATION:
            raise ValueError(f"Unknown image normalization {mode!r}; use one of {sorted(_NORMALIZATION)}")
        self.mode = mode

    def call(self, images):
        mean, std, bgr = _NORMALIZATION[self.mode]
        images = ops.cast(images, self.compute_dtype)
        channels = images.shape[-1]
        if channels == 3 and bgr:
            images = ops.flip(images, axis=-1)
        if channels == 1:
            mean, std = mean[:1], std[:1]
        return (images - ops.array(mean, dtype=self.compute_dtype)) / ops.array(std, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="tfsft")
class SequencePooling(keras.layers.Layer):
    """Pools token vectors to one vector: `mean` over real tokens, `max`, or the first (`cls`) token."""

    def __init__(self, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("mean", "max", "cls"):
            raise ValueError(f"Unknown sequence pooling {mode!r}; use mean, max or cls")
        self.mode = mode
        self.supports_masking = False

    def call(self, sequence, padding_mask):
        if self.mode == "cls":
            return sequence[:, 0, :]
        mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence.dtype)
        if self.mode == "max":
            return ops.max(sequence + (mask - 1.0) * 1e4, axis=1)
        total = ops.sum(sequence * mask, axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
