"""Images: class folders or a CSV of paths, verified decoding, cached resized pixels, Keras 3 augmentation."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfsft.backbones import KERAS_APPLICATIONS_NORMALIZATION, load_backbone
from tfsft.config import RunConfig
from tfsft.data import BadRecords, Records
from tfsft.errors import DataError, clean_tf_message
from tfsft.layers import ImageNormalization
from tfsft.modalities.base import CacheFills, Modality, SignatureSpecs, table_records, without_autotune_thread
from tfsft.modalities.predict_inputs import IMAGE_EXTENSIONS
from tfsft.task_types import task_type

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
# Cache decoded images in memory only while they fit comfortably.
CACHE_LIMIT_BYTES = 4 * 1024**3


def decode_and_resize(encoded: tf.Tensor, size, channels: int) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> float32 HxWxC whole-number pixels in 0..255.

    Training caches these as uint8, so they are rounded here: serving then sees exactly the same pixels.
    """
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), size, antialias=True)
    return tf.round(tf.clip_by_value(image, 0.0, 255.0))


class ImageModality(Modality):
    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.size = tuple(config.image.size)
        self.channels = config.image.channels

    # ------------------------------------------------------------------------------------- reading
    def read(self, path: str, bad: BadRecords) -> Records:
        if Path(path).is_dir():
            records = self._read_folder(path, bad)
        else:
            records = self._read_csv(path, bad)
        if self.config.image.verify and len(records):
            records = self._drop_unreadable(records, bad)
        return records

    def _read_folder(self, root: str, bad: BadRecords) -> Records:
        if not task_type(self.config).single_label:
            raise DataError(
                f"'{root}' is a folder of class folders, which only holds single labels; for "
                f"task.type {self.config.task.type} give a CSV with data.path_column and data.label_column."
            )
        paths, labels, rows = [], [], []
        class_dirs = sorted(d for d in Path(root).iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise DataError(
                f"Image folder '{root}' has no class sub-folders. Put each class's images in a folder named after "
                f"the class (e.g. {root}/cat/001.jpg), or give a CSV of path,label."
            )
        empty = []
        for class_dir in class_dirs:
            found = 0
            for file in sorted(class_dir.rglob("*")):
                if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                    paths.append(str(file))
                    labels.append(class_dir.name)
                    rows.append(str(file.relative_to(root)))  # a folder's "row" is the file's path in it
                    found += 1
                elif file.is_file() and not file.name.startswith("."):
                    bad.add(
                        root,
                        str(file.relative_to(root)),
                        f"not an image file (extension {file.suffix or 'none'})",
                        str(file),
                    )
            if not found:
                empty.append(class_dir.name)
        if empty:
            # A class folder without images would make the class vanish from classes.json without a word.
            raise DataError(
                f"Class folder(s) {empty} in '{root}' hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))}). Add "
                f"images, or remove the folder(s)."
            )
        return Records(inputs={"path": paths}, labels=labels, rows=rows, source=root)

    def _read_csv(self, path: str, bad: BadRecords) -> Records:
        data = self.config.data
        base = Path(path).parent

        def inputs_of(number: int, record: dict) -> dict[str, str] | None:
            raw_path = str(record.get(data.path_column) or "").strip()
            if not raw_path:
                bad.add(path, number, f"empty image path in column '{data.path_column}'")
                return None
            file = Path(raw_path) if Path(raw_path).is_absolute() else base / raw_path
            if not file.is_file():
                bad.add(path, number, "image file does not exist", str(file))
                return None
            return {"path": str(file)}

        needed = {"data.path_column": data.path_column, "data.label_column": data.label_column}
        return table_records(path, self.config, bad, needed, ["path"], inputs_of)

    def _drop_unreadable(self, records: Records, bad: BadRecords) -> Records:
        def check(file: str) -> str | None:
            try:
                data = tf.io.read_file(file)
                tf.io.decode_image(data, channels=self.channels, expand_animations=False)
                return None
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError) as exc:
                return clean_tf_message(exc.message)

        with ThreadPoolExecutor(max_workers=4) as pool:
            problems = list(pool.map(check, records.inputs["path"]))
        keep = []
        for i, problem in enumerate(problems):
            if problem is None:
                keep.append(i)
            else:
                bad.add(
                    records.source,
                    records.rows[i],
                    f"corrupt or unreadable image ({problem})",
                    records.inputs["path"][i],
                )
        return records.subset(keep)

    def describe(self, records: Records, index: int) -> dict[str, Any]:
        return {"path": records.inputs["path"][index]}

    def prepare(self, train: Records, run_dir: Path) -> None:
        pass  # nothing is learned from the data: pixels go straight in

    # ------------------------------------------------------------------------------------- tf.data
    def evaluation_order(self, records: Records, block: int | None = None) -> np.ndarray:
        """Record order for forward passes outside training: file order, since every image costs the same."""
        return np.arange(len(records))

    def _load(self, path, target):
        pixels = decode_and_resize(tf.io.read_file(path), self.size, self.channels)
        # uint8 keeps the in-memory cache 4x smaller; the pixels are already whole numbers in 0..255.
        return tf.cast(pixels, tf.uint8), target

    def augmenter(self) -> tuple[list, list]:
        aug = self.config.image.augment
        layers = []
        if aug.crop_padding:
            h, w = self.size
            layers.append(keras.layers.ZeroPadding2D(aug.crop_padding))
            layers.append(keras.layers.RandomCrop(h, w, seed=self.config.seed))
        if aug.flip != "none":
            layers.append(keras.layers.RandomFlip(aug.flip, seed=self.config.seed))
        if aug.rotation:
            layers.append(keras.layers.RandomRotation(aug.rotation, seed=self.config.seed))
        if aug.zoom:
            layers.append(keras.layers.RandomZoom(aug.zoom, seed=self.config.seed))
        if aug.rand_augment and self.channels == 3:
            layers.append(
                keras.layers.RandAugment(value_range=(0, 255), factor=aug.rand_augment_magnitude, seed=self.config.seed)
            )
        mixers = []
        if aug.mixup_alpha:
            mixers.append(keras.layers.MixUp(alpha=aug.mixup_alpha, seed=self.config.seed))
        if aug.cutmix_alpha:
            mixers.append(keras.layers.CutMix(factor=aug.cutmix_alpha, seed=self.config.seed))
        return layers, mixers

    def dataset(
        self,
        records: Records,
        targets: np.ndarray,
        training: bool,
        batch_size: int,
        cache_fills: CacheFills | None = None,
    ) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((np.asarray(records.inputs["path"]), targets))
        ds = ds.map(self._load, num_parallel_calls=AUTOTUNE)
        cache_bytes = len(records) * self.size[0] * self.size[1] * self.channels
        cache = self.config.data.cache and cache_bytes < CACHE_LIMIT_BYTES
        ds = self.epochs(ds, len(records), training, cache, cache_fills)
        ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
        if training:
            layers, mixers = self.augmenter()
            if layers:
                pipeline = keras.Sequential(layers)
                ds = ds.map(lambda x, y: (pipeline(x, training=True), y), num_parallel_calls=AUTOTUNE)
            for mixer in mixers:
                ds = ds.map(lambda x, y, m=mixer: self._mix(m, x, y), num_parallel_calls=AUTOTUNE)
        return without_autotune_thread(ds.prefetch(AUTOTUNE))

    @staticmethod
    def _mix(mixer, images, targets):
        mixed = mixer({"images": images, "labels": targets}, training=True)
        return mixed["images"], mixed["labels"]

    # ------------------------------------------------------------------------------------- serving
    def serving_signatures(self) -> SignatureSpecs:
        h, w = self.size
        return {
            "serving_default": {"image_bytes": tf.TensorSpec([None], tf.string, name="image_bytes")},
            "serving_pixels": {"pixels": tf.TensorSpec([None, h, w, self.channels], tf.float32, name="pixels")},
        }

    def serving_outputs(self, model: keras.Model, signature: str, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return model(self.serving_features(signature, inputs), training=False)

    def serving_features(self, signature: str, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        if signature == "serving_pixels":
            return inputs["pixels"]
        spec = tf.TensorSpec([*self.size, self.channels], tf.float32)
        return tf.map_fn(
            lambda encoded: decode_and_resize(encoded, self.size, self.channels),
            inputs["image_bytes"],
            fn_output_signature=spec,
        )

    def serving_resources(self) -> list[Any]:
        return []

    def serving_examples(self, records: Records, count: int) -> dict[str, list]:
        return {"image_bytes": [Path(p).read_bytes() for p in records.inputs["path"][:count]]}

    # ------------------------------------------------------------------------------------- ONNX export
    onnx_client_steps = "decode and resize images"

    def onnx_dynamic_axes(self) -> dict[int, str]:
        return {0: "batch"}

    def onnx_preprocessing(self, folder: Path) -> dict[str, Any]:
        height, width = self.size
        return {
            "size": [height, width],
            "channels": self.channels,
            "color": "RGB" if self.channels == 3 else "grayscale",
            "layout": "NHWC: [batch, height, width, channels]",
            "dtype": "float32",
            "value_range": [0, 255],
            "steps": [
                f"decode the image (JPEG/PNG/BMP/GIF) to {self.channels} channel(s) of uint8",
                f"resize to {height}x{width} (bilinear with antialiasing, tf.image.resize(..., antialias=True))",
                "round to whole numbers, clip to 0..255, cast to float32",
            ],
            "normalization": f"'{self.normalization()}' is applied inside the model: do not normalize",
            "reference": "tfsft.modalities.image.decode_and_resize",
        }

    # ------------------------------------------------------------------------------------- model
    def use_model_inputs(self, model: keras.Model) -> None:
        pass  # one image input, whatever the model calls it

    def adopt_loaded_model(self, model: keras.Model) -> None:
        pass  # an image model runs as loaded

    def normalization(self) -> str:
        mode = self.config.image.normalization
        if mode != "auto":
            return mode
        spec = self.config.model.backbone
        if spec.source == "keras_applications" and spec.name:  # config validation requires the name there
            return KERAS_APPLICATIONS_NORMALIZATION[spec.name]
        return "torch" if spec.preset else "unit"

    def backbone(self) -> keras.Model:
        return load_backbone(self.config.model.backbone, image_shape=(*self.size, self.channels))

    def model_inputs(self) -> Any:
        return keras.Input(shape=(*self.size, self.channels), dtype="float32", name="image")

    def unused_backbone_layers(self, backbone: keras.Model) -> tuple[str, ...]:
        return ()

    def features(self, backbone: keras.Model, inputs: Any) -> Any:
        x = ImageNormalization(self.normalization(), name="normalization")(inputs)
        x = backbone(x)
        if isinstance(x, dict):
            x = x[sorted(x)[-1]]
        pooling = self.config.model.head.pooling
        if pooling in ("auto", "avg", "mean"):
            return keras.layers.GlobalAveragePooling2D(name="pooling")(x)
        if pooling == "max":
            return keras.layers.GlobalMaxPooling2D(name="pooling")(x)
        raise DataError(f"model.head.pooling = '{pooling}' is for text; images use avg or max.")
