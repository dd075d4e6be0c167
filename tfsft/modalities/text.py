"""Text: CSV/TSV/JSONL records, in-graph tokenization, length-grouped batches, token pooling."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfsft.backbones import from_preset_or_explain, load_backbone
from tfsft.config import RunConfig
from tfsft.data import BadRecords, Records, table_format
from tfsft.errors import DataError
from tfsft.layers import SequencePooling
from tfsft.modalities.base import CacheFills, Modality, SignatureSpecs, table_records, without_autotune_thread
from tfsft.modalities.length_grouping import TRAINING_LENGTH_MULTIPLE, length_grouped_batches
from tfsft.paths import resolve
from tfsft.ragged import unvalidated_ragged_tensors

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
IN_PIPELINE_SORT_LIMIT = 100_000  # validation splits up to this size are sorted in their pipeline
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SERVING_CHUNK = 16  # texts per model call inside a serving request (see TextModality.serving_outputs)


class TextModality(Modality):
    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.tokenizer: Any = None
        self.packer: Any = None
        self._tokenize_batch: Any = None  # `tokenize` as one tf.function, built with the tokenizer
        self.input_names: list[str] = ["token_ids", "segment_ids", "padding_mask"]

    # ------------------------------------------------------------------------------------- reading
    def read(self, path: str, bad: BadRecords) -> Records:
        data = self.config.data
        if table_format(path, data.format) == "image_folder":
            raise DataError("data.format image_folder is for images; text needs csv, tsv or jsonl.")
        needed = {"data.text_column": data.text_column, "data.label_column": data.label_column}
        columns = ["text"]
        if data.text_pair_column:
            needed["data.text_pair_column"] = data.text_pair_column
            columns.append("text_pair")

        def inputs_of(number: int, record: dict) -> dict[str, str] | None:
            text = record.get(data.text_column)
            if text is None or not str(text).strip():
                bad.add(path, number, f"empty or missing text in column '{data.text_column}'")
                return None
            pair = None
            if data.text_pair_column:
                pair = record.get(data.text_pair_column)
                if pair is None or not str(pair).strip():
                    bad.add(path, number, f"empty or missing text in column '{data.text_pair_column}'")
                    return None
            return {"text": str(text).strip(), "text_pair": str(pair).strip() if pair is not None else ""}

        return table_records(path, self.config, bad, needed, columns, inputs_of)

    def describe(self, records: Records, index: int) -> dict[str, Any]:
        out = {"text": records.inputs["text"][index]}
        if "text_pair" in records.inputs:
            out["text_pair"] = records.inputs["text_pair"][index]
        return out

    # ------------------------------------------------------------------------------------- tokenizer
    def prepare(self, train: Records, run_dir: Path) -> None:
        """Load (or learn into `run_dir`) the tokenizer and build the packer."""
        import keras_hub

        from tfsft.keras_internals import plain_containers_untracked

        spec = self.config.model.backbone
        # Keras's and then TensorFlow's attribute tracking each walk every entry of a 30,000-token vocabulary
        # when the tokenizer stores it (~3 s and ~0.4 s of CPU before the first step on a 2-core AVX2 EPYC).
        # The tokenizer holds no Keras variables, and its WordPiece model is a TensorFlow object, tracked by
        # TensorFlow as before: the walks over plain strings and ids record nothing.
        with plain_containers_untracked():
            if spec.preset:
                self.tokenizer = from_preset_or_explain(keras_hub.models.Tokenizer.from_preset, spec, "tokenizer")
            else:
                vocabulary = self._vocabulary(train, run_dir)
                self.tokenizer = keras_hub.models.BertTokenizer(
                    vocabulary=vocabulary, lowercase=self.config.text.lowercase
                )
        self.packer = keras_hub.layers.MultiSegmentPacker(
            sequence_length=self.config.text.max_length,
            start_value=self.tokenizer.start_token_id,
            end_value=self.tokenizer.end_token_id,
            pad_value=self.tokenizer.pad_token_id,
            truncate="round_robin",
        )
        # One traced tokenizer for every tf.data pipeline: each `map(self.tokenize)` would trace the WordPiece
        # graph again (~1 s of CPU each: training, validation, its length order, test, calibration), all of it
        # before the first step or between training and the report. A map that calls this function only adds a
        # call to the graph traced once.
        # Its input signature makes it one trace for batches of any size, in a pipeline or called directly.
        spec = tf.TensorSpec([None], tf.string)
        self._tokenize_batch = tf.function(
            self.tokenize,
            autograph=False,
            input_signature=[{name: spec for name in self.serving_signatures()["serving_default"]}],
        )

    def _vocabulary(self, train: Records, run_dir: Path) -> str:
        text_cfg = self.config.text
        if not text_cfg.vocabulary:
            raise DataError(
                "A text backbone built from model.backbone.architecture needs a vocabulary: set text.vocabulary "
                "to a vocab.txt (one WordPiece token per line) or to 'learn' to build one from the training texts."
            )
        if text_cfg.vocabulary != "learn":
            path = resolve(text_cfg.vocabulary, what="text.vocabulary")
            if not Path(path).is_file():
                raise DataError(f"text.vocabulary = '{text_cfg.vocabulary}' does not exist. Give a vocab.txt path.")
            return path
        import keras_hub

        target = Path(run_dir) / "vocab.txt"
        if not target.exists():
            texts = train.inputs["text"] + [t for t in train.inputs.get("text_pair", []) if t]
            keras_hub.tokenizers.compute_word_piece_vocabulary(
                tf.data.Dataset.from_tensor_slices(texts).batch(1000),
                vocabulary_size=text_cfg.vocabulary_size,
                lowercase=text_cfg.lowercase,
                reserved_tokens=SPECIAL_TOKENS,
                vocabulary_output_file=str(target),
            )
            log.info("Learned a %d-token WordPiece vocabulary -> %s", text_cfg.vocabulary_size, target)
        return str(target)

    @property
    def vocabulary_size(self) -> int:
        return int(self.tokenizer.vocabulary_size())

    def tokenize(self, features: dict) -> dict:
        """Batch of raw strings -> fixed-length token_ids / segment_ids / padding_mask (max_length)."""
        with unvalidated_ragged_tensors():  # the tokenizer's splits come from TF Text's kernels: see tfsft/ragged.py
            segments = [self.tokenizer(features["text"])]
            if "text_pair" in features:
                segments.append(self.tokenizer(features["text_pair"]))
            token_ids, segment_ids = self.packer(tuple(segments) if len(segments) > 1 else segments[0])
        padding_mask = tf.cast(token_ids != self.tokenizer.pad_token_id, tf.int32)
        packed = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        return {name: packed[name] for name in self.input_names}

    # ------------------------------------------------------------------------------------- tf.data
    def _trim(self, features: dict, targets, multiple: int = TRAINING_LENGTH_MULTIPLE):
        """Cut a batch's padding down to its longest sequence, rounded up to a multiple of `multiple`.

        The model is traced once for any length (the batch and length dimensions are unknown in the graph), so a
        batch of 40-token tweets costs the model 40 positions, not `max_length`. Training and evaluation round up
        (length_grouping.TRAINING_LENGTH_MULTIPLE), so that an epoch meets at most max_length / 4 shapes (oneDNN
        builds its kernels once per shape); serving (`multiple=1`) computes no padding at all: ~9 % more texts/s
        on tweets, measured on the exported model.
        """
        longest = tf.reduce_max(tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32), axis=1))
        length = tf.minimum((longest + multiple - 1) // multiple * multiple, tf.shape(features["padding_mask"])[1])
        return {k: v[:, :length] for k, v in features.items()}, targets

    def evaluation_order(self, records: Records, block: int | None = None) -> np.ndarray:
        """Record order for forward passes outside training: by token length within each run of `block` records.

        An evaluation batch is padded to its longest text (`_trim`), so in file order a batch of tweets of 10-60
        tokens costs 64 positions per row; batches of neighbours in length cost each row about its own length.
        Ties keep file order. `block` (the records a capped validation covers: `validation_steps` batches) keeps
        the same records in each run of batches as in file order; None sorts the whole split.
        """
        columns = {name: np.asarray(values, dtype=object) for name, values in records.inputs.items()}
        lengths_of = tf.autograph.experimental.do_not_convert(lambda f: self._lengths(self._tokenize_batch(f)))
        batches = tf.data.Dataset.from_tensor_slices(columns).batch(512).map(lengths_of, num_parallel_calls=AUTOTUNE)
        lengths = np.concatenate([np.zeros(0, np.int32), *(b.numpy() for b in batches)])
        return self._length_order(tf.constant(lengths), block or max(len(records), 1)).numpy()

    def _lengths(self, features: dict) -> tf.Tensor:
        return tf.reduce_sum(tf.cast(features["token_ids"] != self.tokenizer.pad_token_id, tf.int32), axis=1)

    def _length_order(self, lengths: tf.Tensor, run_length: int) -> tf.Tensor:
        """Stable order by (run of `run_length` records, token length, position): the one key of the Python order
        (`evaluation_order`) and of the in-pipeline one (`evaluation_batches`)."""
        runs = tf.range(tf.size(lengths, out_type=tf.int64), dtype=tf.int64) // run_length
        return tf.argsort(runs * (self.config.text.max_length + 1) + tf.cast(lengths, tf.int64), stable=True)

    def evaluation_batches(
        self, records: Records, targets: np.ndarray, batch_size: int, block: int | None = None
    ) -> tf.data.Dataset:
        """Batches in `evaluation_order`, sorted inside the pipeline from the tokenization it does anyway (the
        Python order tokenizes the split once more, before the first step: 0.65 s for 200 tweets, AMD EPYC, AVX2).
        The tokenized split is sorted as one element; over `IN_PIPELINE_SORT_LIMIT` records, the Python order."""
        count, no_autograph = len(records), tf.autograph.experimental.do_not_convert
        if count > IN_PIPELINE_SORT_LIMIT or count == 0:
            return super().evaluation_batches(records, targets, batch_size, block)

        def by_length(features, labels):
            order = self._length_order(self._lengths(features), block or count)
            return {k: tf.gather(v, order) for k, v in features.items()}, tf.gather(labels, order)

        ds = self._tokenized(records, targets).batch(count).map(no_autograph(by_length)).unbatch()
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
        ds = ds.cache() if self.config.data.cache else ds
        ds = ds.batch(batch_size).map(no_autograph(self._trim), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
        return without_autotune_thread(ds)

    def _tokenized(self, records: Records, targets: np.ndarray) -> tf.data.Dataset:
        """`(features, target)` per record, in record order, tokenized in batches of 512."""
        columns = {name: np.asarray(records.inputs[name], dtype=object) for name in records.inputs}
        tokenized = tf.autograph.experimental.do_not_convert(lambda f, y: (self._tokenize_batch(f), y))
        ds = tf.data.Dataset.from_tensor_slices((columns, targets)).batch(512)
        ds = ds.map(tokenized, num_parallel_calls=AUTOTUNE).unbatch()
        return ds.apply(tf.data.experimental.assert_cardinality(len(records)))  # unbatch forgets the size

    def dataset(
        self,
        records: Records,
        targets: np.ndarray,
        training: bool,
        batch_size: int,
        cache_fills: CacheFills | None = None,
    ) -> tf.data.Dataset:
        # The functions given to tf.data are plain TensorFlow: AutoGraph's conversion would only cost start-up time.
        no_autograph = tf.autograph.experimental.do_not_convert
        tokenized = self._tokenized(records, targets)
        if training:

            def length_grouped(shuffled, epoch):
                grouping = self.config.text.length_grouping
                return length_grouped_batches(shuffled, batch_size, grouping, self.config.seed, self._lengths, epoch)

            ds = self.epochs(tokenized, len(records), True, self.config.data.cache, cache_fills, length_grouped)
        else:
            ds = self.epochs(tokenized, len(records), False, self.config.data.cache, cache_fills).batch(batch_size)
        return without_autotune_thread(ds.map(no_autograph(self._trim), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE))

    # ------------------------------------------------------------------------------------- serving
    def serving_signatures(self) -> SignatureSpecs:
        """Signature name -> {input name: TensorSpec} of raw inputs a client sends."""
        spec = {"text": tf.TensorSpec([None], tf.string, name="text")}
        if self.config.data.text_pair_column:
            spec["text_pair"] = tf.TensorSpec([None], tf.string, name="text_pair")
        return {"serving_default": spec}

    def serving_outputs(self, model: keras.Model, signature: str, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """The model's outputs on a request, computed on length-sorted chunks, in the request's order.

        A request pads every text to its longest one: among 64 tweets of 10-60 tokens, most of the model's work
        would go to padding. Sorted by length and cut into chunks of `SERVING_CHUNK`, each chunk is padded only to
        its own longest text (~1.6x less work on tweets); the outputs go back to the order they came in.
        """
        features = self.tokenize(inputs)
        order = tf.argsort(tf.reduce_sum(features["padding_mask"], axis=1), stable=True)
        features = {name: tf.gather(value, order) for name, value in features.items()}
        count = tf.shape(order)[0]

        def chunk_outputs(start):
            chunk = {name: value[start : start + SERVING_CHUNK] for name, value in features.items()}
            return tf.cast(model(self._trim(chunk, None, multiple=1)[0], training=False), tf.float32)

        # The element shape lets an empty request concatenate to [0, outputs] instead of failing.
        outputs = tf.TensorArray(
            tf.float32,
            size=0,
            dynamic_size=True,
            infer_shape=False,
            element_shape=tf.TensorShape([None, model.output_shape[-1]]),
        )
        _, outputs = tf.while_loop(
            lambda i, _: i * SERVING_CHUNK < count,
            lambda i, out: (i + 1, out.write(i, chunk_outputs(i * SERVING_CHUNK))),
            (tf.constant(0), outputs),
        )
        return tf.gather(outputs.concat(), tf.math.invert_permutation(order))

    def serving_resources(self) -> list[Any]:
        """Layers holding TF resources (vocabulary tables) the exported graph needs; built before tracking."""
        self.tokenize({name: tf.constant(["warm up"]) for name in self.serving_signatures()["serving_default"]})
        return [self.tokenizer, self.packer]

    def serving_examples(self, records: Records, count: int) -> dict[str, list]:
        return {name: [str(v) for v in values[:count]] for name, values in records.inputs.items()}

    # ------------------------------------------------------------------------------------- ONNX export
    onnx_client_steps = "tokenize and pack texts"

    def onnx_dynamic_axes(self) -> dict[int, str]:
        return {0: "batch", 1: "sequence"}

    def onnx_preprocessing(self, folder: Path) -> dict[str, Any]:
        """Tokenizer and packing a client must reproduce; writes the vocabulary file(s) into `folder`."""
        from keras_hub.tokenizers import WordPieceTokenizer

        config, tokenizer = self.config, self.tokenizer
        if isinstance(tokenizer, WordPieceTokenizer):
            (folder / "vocab.txt").write_text(
                "".join(f"{token}\n" for token in tokenizer.get_vocabulary()), encoding="utf-8"
            )
            files = ["vocab.txt"]
            details = {
                "algorithm": "wordpiece",
                "lowercase": tokenizer.lowercase,
                "strip_accents": tokenizer.strip_accents,
                "split_on_cjk": tokenizer.split_on_cjk,
                "suffix_indicator": tokenizer.suffix_indicator,
                "unknown_token": tokenizer.oov_token,
            }
        else:  # BPE / SentencePiece presets: their own asset files, described by their Keras config
            before = set(os.listdir(folder))
            tokenizer.save_assets(str(folder))
            files = sorted(set(os.listdir(folder)) - before)
            details = {
                "lowercase": getattr(tokenizer, "lowercase", None),
                "config": {k: v for k, v in tokenizer.get_config().items() if isinstance(v, (str, int, bool))},
            }
        special = {
            role: {"token": getattr(tokenizer, f"{role}_token"), "id": int(getattr(tokenizer, f"{role}_token_id"))}
            for role in ("start", "end", "pad")
            if getattr(tokenizer, f"{role}_token", None) is not None
        }
        columns = [config.data.text_column] + ([config.data.text_pair_column] if config.data.text_pair_column else [])
        return {
            "tokenizer": {
                "kind": type(tokenizer).__name__,
                "vocabulary_files": files,
                **details,
                "reference": f"keras_hub.models.{type(tokenizer).__name__} with these settings",
            },
            "max_length": config.text.max_length,
            "special_tokens": special,
            "text_fields": columns,
            "packing": {
                "layout": "start + text + end" + (" + text_pair + end" if len(columns) > 1 else ""),
                "truncate": "round_robin: the max_length budget left after start/end tokens goes one token at a time "
                "to each segment in turn (text first); each segment keeps its first tokens",
                "token_ids": "pad with the pad id at the end; every row of a batch the same length, at most "
                "max_length (max_length always works; the trailing padding does not change the outputs)",
                "segment_ids": "0 for start, text and its end token (and padding); 1 for text_pair and its end token",
                "padding_mask": "1 for real tokens (including start/end), 0 for padding",
                "reference": "keras_hub.layers.MultiSegmentPacker(sequence_length=max_length, start_value=start id, "
                "end_value=end id, pad_value=pad id, truncate='round_robin')",
            },
        }

    # ------------------------------------------------------------------------------------- model
    def use_model_inputs(self, model: keras.Model) -> None:
        """Align the tokenizer output with a loaded model's inputs."""
        self.input_names = [n for n in ("token_ids", "segment_ids", "padding_mask") if n in _input_names(model)]

    def backbone(self) -> keras.Model:
        backbone = load_backbone(self.config.model.backbone, vocabulary_size=self.vocabulary_size)
        self.use_model_inputs(backbone)
        return backbone

    def model_inputs(self) -> dict[str, Any]:
        return {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in self.input_names}

    def unused_backbone_layers(self, backbone: keras.Model) -> tuple[str, ...]:
        if self.config.model.head.pooling != "pooled" and any(
            layer.name == "pooled_dense" for layer in backbone.layers
        ):
            return ("pooled_dense",)
        return ()

    def _pooling(self) -> str:
        pooling = self.config.model.head.pooling
        return "mean" if pooling in ("auto", "avg") else pooling

    def adopt_loaded_model(self, model: keras.Model) -> None:
        from tfsft.first_token import apply_to_model

        apply_to_model(model, self._pooling())  # KerasHub rebuilds the backbone with plain encoder layers

    def features(self, backbone: keras.Model, inputs: Any) -> Any:
        from tfsft.first_token import compute_first_token_only

        pooling = self._pooling()
        compute_first_token_only(backbone, pooling)  # cls/pooled read token 0 only: the last layer computes that
        outputs = backbone({k: inputs[k] for k in self.input_names})
        if pooling == "pooled":
            if not (isinstance(outputs, dict) and "pooled_output" in outputs):
                raise DataError("model.head.pooling: pooled needs a backbone with a pooled_output (e.g. BERT).")
            return outputs["pooled_output"]
        sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        return SequencePooling(pooling, name="pooling")(sequence, inputs["padding_mask"])


def _input_names(model: keras.Model) -> list[str]:
    inputs = model.input
    if isinstance(inputs, dict):
        return list(inputs)
    return [t.name for t in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
