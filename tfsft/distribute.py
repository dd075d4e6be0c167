"""Pick the tf.distribute strategy and the precision policy."""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from tfsft.config import DistributeConfig
from tfsft.errors import ConfigError

log = logging.getLogger(__name__)


def make_strategy(cfg: DistributeConfig) -> tf.distribute.Strategy:
    choice = cfg.strategy
    if choice == "auto":
        if os.environ.get("TF_CONFIG"):
            choice = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            choice = "mirrored"
        else:
            choice = "default"
    if choice == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "distribute.strategy = multi_worker needs the TF_CONFIG environment variable describing the cluster "
                "and this worker's task (see tf.distribute.MultiWorkerMirroredStrategy)."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if choice == "mirrored":
        return tf.distribute.MirroredStrategy()
    if choice == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError) as exc:
            raise ConfigError(f"distribute.strategy = tpu, but no TPU was found ({exc}). Use auto.") from None
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def cluster_task() -> tuple[str, int, int]:
    """(task type, task index, number of training tasks) from TF_CONFIG; ("chief", 0, 1) without one."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return "chief", 0, 1
    spec = json.loads(raw)
    cluster, task = spec.get("cluster", {}), spec.get("task", {})
    size = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return task.get("type", "chief"), int(task.get("index", 0)), max(size, 1)


def is_multi_worker() -> bool:
    return cluster_task()[2] > 1


def resolve_jit_compile(setting) -> bool:
    """`auto`: XLA on GPU/TPU, where it fuses the transformer/conv kernels; off on CPU, where it was slower."""
    if setting != "auto":
        return bool(setting)
    accelerator = bool(tf.config.list_physical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    log.info(
        "auto: training.jit_compile = %s: %s",
        accelerator,
        "a GPU/TPU is present, where XLA fuses the kernels"
        if accelerator
        else "CPU only, where whole-model XLA trained MiniLM at 0.69-0.74x the speed without it (two machines, "
        "scripts/bench_train.py --xla)",
    )
    return accelerator


def is_chief() -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    cluster = json.loads(raw).get("cluster", {})
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


def set_precision(cfg: DistributeConfig) -> str:
    """Set the global Keras dtype policy; `auto` uses bf16 on GPUs that support it, else float32."""
    policy = cfg.mixed_precision
    if policy == "auto":
        policy = "float32"
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            if details.get("compute_capability", (0, 0)) >= (8, 0):
                policy = "mixed_bfloat16"
                break
    keras.mixed_precision.set_global_policy(policy)
    return policy


def distribute_global_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """Split each global batch of `dataset` across the replicas, keeping its examples together.

    TensorFlow's own `experimental_distribute_dataset` cannot split a length-grouped stream (its batch size is
    not static): it rewrites the batching to per-replica sizes, so one optimizer step would mix examples of
    different global batches and runs would stop matching a one-device run. Here every input pipeline builds
    the same seeded global batches and keeps its replicas' slices, in replica order. Pass a stream without
    batches smaller than the replica count (`drop_batches_smaller_than`): a replica cannot take an empty batch.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return dataset

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def replica_slices(*batch):
            size = tf.shape(tf.nest.flatten(batch)[0])[0]
            parts = []
            for replica in range(first, first + local):
                start, stop = (size * replica) // replicas, (size * (replica + 1)) // replicas
                parts.append(
                    tf.data.Dataset.from_tensors(
                        # called at once, so binding the loop variables late is harmless; the defaults say so
                        tf.nest.map_structure(lambda t, start=start, stop=stop: t[start:stop], batch)
                    )
                )
            sliced = parts[0]
            for part in parts[1:]:
                sliced = sliced.concatenate(part)
            return sliced

        return dataset.flat_map(replica_slices).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def drop_batches_smaller_than(dataset: tf.data.Dataset, size: int) -> tf.data.Dataset:
    """A batch shorter than the replica count cannot be split (a replica cannot take an empty batch): skip it.
    The endless training streams emit full batches, so this only guards against a source that does not."""
    return dataset.filter(lambda *batch: tf.shape(tf.nest.flatten(batch)[0])[0] >= size)


def with_class_weights(dataset: tf.data.Dataset, class_weight: dict) -> tf.data.Dataset:
    """(x, one-hot y) -> (x, y, per-example weight): Keras's `class_weight`, which it refuses for datasets that
    are already distributed."""
    weights = tf.constant([class_weight.get(i, 1.0) for i in range(max(class_weight) + 1)], tf.float32)
    return dataset.map(
        lambda x, y: (x, y, tf.gather(weights, tf.argmax(y, axis=-1))), num_parallel_calls=tf.data.AUTOTUNE
    )


def patch_keras_for_multi_worker(model, strategy: tf.distribute.Strategy) -> None:
    """Work around two Keras 3 bugs (checked on 3.15) that stop fit() under MultiWorkerMirroredStrategy.

    1. Before the first step, `_maybe_symbolic_build` averages the first distributed batch across replicas with
       `strategy.reduce` only to learn its structure; CollectiveAllReduceStrategy cannot reduce a dict of inputs
       (BERT's token_ids / padding_mask / segment_ids). The local replica's batch has the same structure: use it.
    2. Each step's logs (scalar loss and metrics, computed per replica) are averaged across workers with
       `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars. Reduce them with axis=None: the same
       all-reduce mean, without the batch axis they do not have.
    Both are private hooks; the multi-worker test fails loudly if a Keras upgrade moves them.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    def local_value(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local_value, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = symbolic_build

    original = getattr(keras_tf_trainer, "_tfsft_original_reduce_per_replica", keras_tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0), values
            )
        return original(values, strategy, reduction)

    keras_tf_trainer._tfsft_original_reduce_per_replica = original
    keras_tf_trainer.reduce_per_replica = reduce_per_replica
