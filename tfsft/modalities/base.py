"""The `Modality` contract: everything the trainer, evaluation, export, ONNX export and predict ask of a modality.

A modality turns its raw sources (tables of texts, folders of images, ...) into `Records`, `Records` into a
`tf.data` pipeline of `(model_inputs, targets)`, and a backbone into pooled features; it also says what an
exported model takes from a client (raw inputs per signature) and what an ONNX client must do itself. Nothing
outside `tfsft.modalities` branches on which modality a run uses: it calls these methods.

To add a modality: subclass `Modality`, implement every abstract method (instantiating a subclass that misses
one raises TypeError), register it in `tfsft.modalities.MODALITIES` and add its name to `task.modality` in
config.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfsft.config import RunConfig
from tfsft.data import BadRecords, Records, read_table, require_columns, row_label, table_format

log = logging.getLogger(__name__)

# Raw inputs of one exported signature: input name -> spec of what a client sends (a batch of them).
SignatureSpecs = dict[str, dict[str, tf.TensorSpec]]


class Modality(ABC):
    """One kind of input. Built from the run's config; every method reads its settings from `self.config`."""

    def __init__(self, config: RunConfig):
        self.config = config

    # ------------------------------------------------------------------------------------- reading
    @abstractmethod
    def read(self, path: str, bad: BadRecords) -> Records:
        """The usable records of one source (a file, or a folder where its `ModalitySpec.accepts_folders`).

        A record that cannot be used (missing input, bad label, unreadable file) goes to `bad` with its row and
        reason, and is left out; a source that cannot be read at all raises DataError.
        """

    @abstractmethod
    def describe(self, records: Records, index: int) -> dict[str, Any]:
        """The raw inputs of record `index` as a reader would recognise it (columns of worst_examples.csv)."""

    @abstractmethod
    def prepare(self, train: Records, run_dir: Path) -> None:
        """Load or learn what turning inputs into tensors needs (e.g. a tokenizer), before `dataset`/`backbone`.

        Files it learns (a vocabulary) are written into `run_dir`, and read back from there when the run's own
        directory is given again (evaluate, export).
        """

    # ------------------------------------------------------------------------------------- tf.data
    @abstractmethod
    def dataset(
        self,
        records: Records,
        targets: np.ndarray,
        training: bool,
        batch_size: int,
        cache_fills: CacheFills | None = None,
    ) -> tf.data.Dataset:
        """Batches of `(model inputs, targets)`; `targets[i]` belongs to record i.

        training=True: an endless stream, reshuffled every epoch from `config.seed`, with augmentation.
        training=False: every record once, in record order, without augmentation (predictions line up).
        `cache_fills`: where to add an in-memory cache the first batch needs whole, to be filled ahead (`epochs`).
        """

    def epochs(
        self,
        examples: tf.data.Dataset,
        count: int,
        training: bool,
        cache: bool,
        cache_fills: CacheFills | None,
        each_epoch=None,
    ) -> tf.data.Dataset:
        """The `count` examples of a split (one element each, not yet batched), kept in memory after their first
        pass if `cache`; training: as `shuffled_epochs` (with its `each_epoch`). When the shuffle buffer takes the
        whole split, the first batch needs every example tokenized or decoded: the cache then goes to
        `cache_fills`, which the trainer fills while the first step is traced, instead of after."""
        if cache:
            examples = examples.cache()
        if not training:
            return examples
        buffer = min(self.config.data.shuffle_buffer, count)
        if cache and cache_fills is not None and buffer == count:
            cache_fills.add(examples)
        return shuffled_epochs(examples, buffer, self.config.seed, each_epoch)

    @abstractmethod
    def evaluation_order(self, records: Records, block: int | None = None) -> np.ndarray:
        """The order to run forward passes outside training in (a permutation of `range(len(records))`).

        Evaluation and validation batches follow it, and outputs are put back in record order
        (`evaluation.in_record_order`): text sorts by token length so each batch is padded less; a modality whose
        examples all cost the same returns file order. With `block`, records are reordered only within each run
        of `block` records (a capped validation reads the same records as in file order).
        """

    def ordered_dataset(
        self, records: Records, targets: np.ndarray, order: np.ndarray, batch_size: int
    ) -> tf.data.Dataset:
        """`dataset(training=False)` batches of the records taken in `order` (a permutation of their indices)."""
        if not np.array_equal(order, np.arange(len(records))):
            records, targets = records.subset(order), targets[order]
        return self.dataset(records, targets, training=False, batch_size=batch_size)

    def evaluation_batches(
        self, records: Records, targets: np.ndarray, batch_size: int, block: int | None = None
    ) -> tf.data.Dataset:
        """`ordered_dataset` in `evaluation_order`, for passes that keep aggregated metrics only (validation): the
        order is not returned, so a modality may work it out inside the pipeline."""
        return self.ordered_dataset(records, targets, self.evaluation_order(records, block), batch_size)

    # ------------------------------------------------------------------------------------- model
    @abstractmethod
    def backbone(self) -> keras.Model:
        """The pretrained (or freshly built) backbone named by `config.model.backbone`; after `prepare`."""

    @abstractmethod
    def use_model_inputs(self, model: keras.Model) -> None:
        """Align what `dataset` yields with the inputs of a model loaded from disk (a run's model.keras)."""

    @abstractmethod
    def adopt_loaded_model(self, model: keras.Model) -> None:
        """Make a model loaded from a run's model.keras compute as `features` built it for training (what the
        file cannot hold: how layers run, not their weights)."""

    @abstractmethod
    def model_inputs(self) -> Any:
        """Fresh `keras.Input`s (one tensor or a dict of them) matching what `dataset` yields."""

    @abstractmethod
    def features(self, backbone: keras.Model, inputs: Any) -> Any:
        """Pooled features `[batch, width]` of `inputs` through `backbone`; the head is built on top."""

    @abstractmethod
    def unused_backbone_layers(self, backbone: keras.Model) -> tuple[str, ...]:
        """Names of backbone layers `features` does not use: kept frozen (they would receive no gradient)."""

    # ------------------------------------------------------------------------------------- SavedModel export
    @abstractmethod
    def serving_signatures(self) -> SignatureSpecs:
        """Signature name -> the raw inputs a client sends to it; 'serving_default' must be one of them."""

    @abstractmethod
    def serving_outputs(self, model: keras.Model, signature: str, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """The model's outputs (logits or values, one row per input) for one request of raw `inputs`, in graph."""

    @abstractmethod
    def serving_resources(self) -> list[Any]:
        """Objects holding TF resources (e.g. vocabulary tables) the exported graph must track."""

    @abstractmethod
    def serving_examples(self, records: Records, count: int) -> dict[str, list]:
        """The first `count` records as a client would send them to 'serving_default' (raw strings or bytes)."""

    # ------------------------------------------------------------------------------------- ONNX export
    @abstractmethod
    def onnx_dynamic_axes(self) -> dict[int, str]:
        """Axis index -> name of the ONNX inputs' axes whose length varies between calls ({0: 'batch', ...})."""

    @abstractmethod
    def onnx_preprocessing(self, folder: Path) -> dict[str, Any]:
        """What an ONNX client must do to raw inputs itself (preprocessing.json); may write files into `folder`."""

    @property
    @abstractmethod
    def onnx_client_steps(self) -> str:
        """That preprocessing in a few words, completing 'clients must ...' ('tokenize and pack texts')."""


def table_records(
    path: str,
    config: RunConfig,
    bad: BadRecords,
    needed: dict[str, str],
    columns: list[str],
    inputs_of: Callable[[int, dict], dict[str, Any] | None],
) -> Records:
    """The records of a CSV/TSV/JSONL table: `inputs_of(row number, row)` -> the row's inputs by column.

    `needed` maps config keys to the table columns that must exist. A row `inputs_of` rejects (it returns None
    after `bad.add`) or whose label is missing or invalid is left out, counted in `bad`.
    """
    data = config.data
    header, rows = read_table(path, table_format(path, data.format), data.encoding, bad, data.quoting)
    require_columns(path, header, needed)
    inputs: dict[str, list] = {name: [] for name in columns}
    labels, numbers = [], []
    for number, row in rows:
        values = inputs_of(number, row)
        if values is None:
            continue
        label = row_label(row, config, path, number, bad)
        if label is None:
            continue
        for name in columns:
            inputs[name].append(values[name])
        labels.append(label)
        numbers.append(number)
    return Records(inputs=inputs, labels=labels, rows=numbers, source=path)


def shuffled_epochs(dataset: tf.data.Dataset, buffer_size: int, seed: int, each_epoch=None) -> tf.data.Dataset:
    """An endless stream of `dataset`, reshuffled every epoch with the seed `seed + epoch`.

    The order is a pure function of (seed, epoch): it does not depend on how many iterators were opened on the
    dataset before (tf.data's `reshuffle_each_iteration` does), so a resumed run, a run on several replicas and a
    one-device run all see the same examples in the same order. `each_epoch(shuffled, epoch)`, if given, turns
    each epoch's shuffled examples into the elements streamed for it (text: its length-grouped batches).
    """

    def one_epoch(epoch):
        graph = tf.compat.v1.get_default_graph()  # this function's own graph, not the caller's
        if graph.seed is not None and graph.seed % (2**31 - 1) == 0:
            # TensorFlow's get_seed checks `(global, op) == (0, 0)`: with a global seed of 0 (`seed: 0`) and a
            # tensor op seed that asks a symbolic tensor for its truth value and fails. A non-zero graph-level
            # seed, local to this function, sidesteps it; the order stays a pure function of (seed, epoch).
            graph.seed = 2**31 - 2
        shuffled = dataset.shuffle(buffer_size, seed=tf.cast(epoch, tf.int64) + seed, reshuffle_each_iteration=False)
        return shuffled if each_epoch is None else each_epoch(shuffled, epoch)

    return tf.data.Dataset.range(2**62).flat_map(one_epoch)


def without_autotune_thread(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` as the modalities hand it to Keras: with tf.data's autotuning thread off.

    With TensorFlow 2.21, deleting an iterator in a training process waited for its autotuning thread's next
    scheduled round (the rounds get further apart the longer the iterator lives, up to a minute). Measured on a
    2-core Xeon: `fit` returned 44 s after its last step (2 epochs of 60 MiniLM steps), and `predict` returned up
    to 6.7 s after its last batch in most runs; with the thread off, both at once. Outside a training process the
    same pipelines did not wait; why is not known. Nothing is tuned by hand instead: without the thread,
    `num_parallel_calls=AUTOTUNE` runs min(16, cores) calls and `prefetch(AUTOTUNE)` grows its buffer when the
    consumer finds it empty (tf.data's legacy autotuner). Four alternating pairs of runs with and without the
    thread reached step 1 within -0.7..+0.6 s of each other and stepped at the same median rate.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


class CacheFills:
    """Reads cached datasets to their end on background threads, so that their in-memory caches are complete
    before training reads them.

    The fill is TensorFlow work (tokenizing, decoding) inside one `reduce` op, which does not hold Python's
    lock: it runs on a core the Python tracing the training step leaves idle. The examples, their order and
    every batch stay the same, whoever writes the cache: an iterator that opens the cache before the fill is
    complete writes it too (the same elements), and the first to finish completes it.
    """

    def __init__(self) -> None:
        self._pending: list[tf.data.Dataset] = []
        self._threads: list[threading.Thread] = []

    def add(self, dataset: tf.data.Dataset) -> None:
        """A cached dataset to fill once `start` is called."""
        self._pending.append(dataset)

    @contextlib.contextmanager
    def filling(self) -> Iterator[None]:
        """`start` on entry; on exit (training done, or failed) `wait` for the fills to end."""
        self.start()
        try:
            yield
        finally:
            self.wait()

    def start(self) -> None:
        """Start filling the datasets added so far, one background thread each."""
        # One thread for the fill's own work: the Python that traces the step keeps the other core.
        options = tf.data.Options()
        options.threading.private_threadpool_size = 1
        options.threading.max_intra_op_parallelism = 1
        for dataset in self._pending:
            thread = threading.Thread(target=_fill, args=(dataset.with_options(options),), name="tfsft-cache-fill")
            thread.start()  # not a daemon: a process that exits early lets the op end instead of tearing it down
            self._threads.append(thread)
        self._pending.clear()

    def wait(self) -> None:
        for thread in self._threads:
            thread.join()
        self._threads.clear()


def _fill(dataset: tf.data.Dataset) -> None:
    try:
        dataset.reduce(np.int64(0), lambda count, _: count + 1)
    except Exception:  # the training stream reads (and fails on) the same data itself: nothing is lost
        log.debug("Filling a dataset cache ahead of training failed", exc_info=True)
