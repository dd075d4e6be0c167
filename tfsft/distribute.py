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
