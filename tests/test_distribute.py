"""tf.distribute on CPU: MirroredStrategy over two logical CPU devices and MultiWorkerMirroredStrategy over two
worker processes on 127.0.0.1 train to the same weights and metrics as one device on the same global batch;
per-replica batch sizes; mixed precision keeps the head in float32 and still learns."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, files_while_written, saved_weights, text_config, validated, write_config

# Runs in a fresh interpreter: logical devices must be configured before TensorFlow initialises.
DRIVER = r"""
import sys
import tensorflow as tf
devices = int(sys.argv[2])
if devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
from tfsft.train import main
sys.exit(main(["--config", sys.argv[1], *sys.argv[3:]]))
"""


def train_in_subprocess(
    tmp_path: Path, raw: dict, devices: int = 1, env: dict | None = None, tag: str = "run"
) -> subprocess.Popen:
    config_path = write_config(tmp_path, raw, f"{tag}.yaml")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.Popen(
        [sys.executable, str(driver), str(config_path), str(devices)],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: int = 400) -> str:
    try:
        out = process.communicate(timeout=timeout)[0]
    finally:
        process.kill()
    assert process.returncode == 0, out[-3000:]
    return out


def only_run(output_dir: Path, name: str) -> Path:
    runs = [p for p in (output_dir / name).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def distributed_config(text_data, tmp_path, name, epochs=2, **overrides):
    # No dropout and a fixed shuffle: every strategy sees the same global batches, so only float summation order
    # differs. SGD keeps that difference from being amplified the way Adam's 1/sqrt(v) does near zero gradients.
    return text_config(
        text_data,
        tmp_path,
        name=name,
        optimizer={"name": "sgd", "learning_rate": 0.02, "momentum": 0.5, "clip": {"mode": "none"}},
        training={"epochs": epochs, "batch_size": 32, "early_stopping": {"enabled": False}},
        **overrides,
    )


def assert_same_training(reference: Path, other: Path):
    ref_w, other_w = saved_weights(reference), saved_weights(other)
    assert ref_w.keys() == other_w.keys()
    moved = 0
    for name, value in ref_w.items():
        np.testing.assert_allclose(other_w[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
        moved += 1
    assert moved > 10
    ref_h = json.loads((reference / "history.json").read_text())
    other_h = json.loads((other / "history.json").read_text())
    ref_h, other_h = (h["epochs"] if isinstance(h, dict) else h for h in (ref_h, other_h))
    for a, b in zip(ref_h, other_h):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1e-6)
    ref_m = json.loads((reference / "metrics.json").read_text())
    other_m = json.loads((other / "metrics.json").read_text())
    assert other_m["test"]["accuracy"] == pytest.approx(ref_m["test"]["accuracy"], abs=1e-6)


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory, text_data) -> Path:
    """The one-device reference run (2 epochs, fresh process) that every multi-replica test compares against:
    it is the same config for all of them, so it is trained once."""
    tmp_path = tmp_path_factory.mktemp("single_device")
    finish(
        train_in_subprocess(
            tmp_path,
            distributed_config(text_data, tmp_path, "single", distribute={"strategy": "default"}),
            tag="single",
        )
    )
    return only_run(tmp_path / "runs", "single")


@pytest.mark.slow
def test_mirrored_on_two_cpus_matches_one_device(tmp_path, text_data, single_device_run):
    out = tmp_path / "runs"
    mirrored = train_in_subprocess(
        tmp_path,
        distributed_config(text_data, tmp_path, "mirrored", distribute={"strategy": "mirrored"}),
        devices=2,
        tag="mirrored",
    )
    log = finish(mirrored)
    assert "MirroredStrategy (2 replicas)" in log, log[-2000:]
    assert_same_training(single_device_run, only_run(out, "mirrored"))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_two_workers(tmp_path, raw: dict) -> list:
    """Two MultiWorkerMirrored workers of the same config (TF_CONFIG on fresh local ports), started in subprocesses."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    return [
        train_in_subprocess(
            tmp_path,
            raw,
            env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
            tag="workers",
        )
        for i in range(2)
    ]


@pytest.mark.slow
def test_two_workers_with_tf_config_match_one_worker(tmp_path, text_data, single_device_run):
    out = tmp_path / "runs"
    raw = distributed_config(text_data, tmp_path, "workers", distribute={"strategy": "multi_worker"})
    workers = start_two_workers(tmp_path, raw)
    logs = [finish(w) for w in workers]
    assert "CollectiveAllReduceStrategy (2 replicas)" in logs[0]  # MultiWorkerMirroredStrategy, logs[0][-2000:]
    run = only_run(out, "workers")
    assert run.name.startswith("mw-") and not (run / ".workers" / "worker-1").exists()
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
    assert_same_training(single_device_run, run)


def test_per_replica_batch_size_sets_the_global_batch(tmp_path, text_data):
    from tfsft.config import load_config
    from tfsft.errors import ConfigError

    raw = text_config(text_data, tmp_path)
    raw["training"].pop("batch_size")
    raw["training"]["per_replica_batch_size"] = 8
    config = validated(raw)
    assert config.training.global_batch_size(4) == 32 and config.training.global_batch_size(1) == 8
    both = text_config(text_data, tmp_path, training={"per_replica_batch_size": 8})
    with pytest.raises(ConfigError, match="either training.batch_size"):
        load_config([write_config(tmp_path, both)])


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_learns_with_a_float32_head(tmp_path, text_data, policy):
    from tfsft.trainer import fit_and_evaluate, prepare

    raw = text_config(
        text_data,
        tmp_path,
        distribute={"mixed_precision": policy},
        training={"epochs": 3, "early_stopping": {"enabled": False}},
    )
    try:
        prepared = prepare(validated(raw))
        model = prepared.model
        assert model.layers[-1].dtype_policy.name == "float32"  # the head computes and outputs float32
        assert prepared.backbone.dtype_policy.name == policy
        if policy == "mixed_float16":
            assert "LossScaleOptimizer" in type(model.optimizer).__name__
        result = fit_and_evaluate(prepared, verbose=0)
    finally:
        import keras

        keras.mixed_precision.set_global_policy("float32")
    losses = [e["loss"] for e in result.history]
    assert losses[-1] < losses[0] * 0.8, losses
    assert result.metrics["test"]["accuracy"] > 0.6
    # Exported, it computes in float32: half precision would run on reference kernels on most serving CPUs.
    import tensorflow as tf

    from tfsft.export import export_run

    version = export_run(result.run_dir, tmp_path / "saved_models", verify=False)
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    graph = signature.graph.as_graph_def()
    nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
    half = {tf.bfloat16.as_datatype_enum, tf.float16.as_datatype_enum}
    computing_in_half = sorted(
        {node.op for node in nodes for value in node.attr.values() if value.type in half or set(value.list.type) & half}
    )
    assert not computing_in_half, computing_in_half
    if importlib.util.find_spec("tf2onnx") and importlib.util.find_spec("onnxruntime"):  # the `onnx` extra
        import onnx

        from tfsft.onnx_export import export_onnx

        target = export_onnx(result.run_dir, tmp_path / "onnx_models")  # verified against Keras in float32 inside
        info = json.loads((target / "export.json").read_text())
        assert (info["trained_dtype_policy"], info["exported_compute_dtype"]) == (policy, "float32")
        graph = onnx.load(str(target / "model.onnx")).graph
        half_types = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
        assert not [t.name for t in graph.initializer if t.data_type in half_types]
        values = [*graph.input, *graph.output, *graph.value_info]
        assert not [v.name for v in values if v.type.tensor_type.elem_type in half_types]
        casts = [n for n in graph.node if n.op_type == "Cast"]
        assert not [n.name for n in casts if any(a.name == "to" and a.i in half_types for a in n.attribute)]


def test_a_mixed_precision_model_is_loaded_for_inference_computing_in_float32():
    import keras

    from tfsft.runs import use_float32_compute

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(hidden))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    (w1, b1), (w2, b2) = ([w.numpy().astype("float64") for w in layer.weights] for layer in model.layers[1:])
    exact = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    assert np.abs(np.asarray(model(x), dtype="float64") - exact).max() > 1e-4  # bfloat16 really differs
    use_float32_compute(model)
    assert [layer.dtype_policy.name for layer in [model, *model.layers[1:]]] == ["float32"] * 3
    np.testing.assert_allclose(np.asarray(model(x)), exact, rtol=1e-5, atol=1e-5)
    for layer, (kernel, bias) in zip(model.layers[1:], [(w1, b1), (w2, b2)]):  # the trained weights, as they were
        np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
        np.testing.assert_array_equal(layer.bias.numpy(), bias)


def test_training_order_depends_on_seed_and_epoch_only():
    import tensorflow as tf

    from tfsft.modalities.base import shuffled_epochs

    stream = shuffled_epochs(tf.data.Dataset.range(20), buffer_size=20, seed=7)
    first = [int(x) for x in stream.take(40)]
    again = [int(x) for x in stream.take(40)]  # a second iterator on the same dataset object
    rebuilt = [int(x) for x in shuffled_epochs(tf.data.Dataset.range(20), 20, 7).take(40)]
    assert first == again == rebuilt
    assert sorted(first[:20]) == sorted(first[20:]) == list(range(20))  # each epoch holds every example once
    assert first[:20] != first[20:]  # and is reshuffled
    assert [int(x) for x in shuffled_epochs(tf.data.Dataset.range(20), 20, 8).take(20)] != first[:20]


@pytest.mark.parametrize("run_seed", [0, 2**31 - 1])
def test_training_order_works_when_the_global_seed_truncates_to_zero(run_seed):
    # `seed: 0` sets TensorFlow's global seed to 0, where TF's own seed check used to fail on the epoch tensor.
    import keras
    import tensorflow as tf

    from tfsft.modalities.base import shuffled_epochs

    keras.utils.set_random_seed(run_seed)
    first = [int(x) for x in shuffled_epochs(tf.data.Dataset.range(20), 20, run_seed).take(40)]
    again = [int(x) for x in shuffled_epochs(tf.data.Dataset.range(20), 20, run_seed).take(40)]
    assert first == again
    assert sorted(first[:20]) == sorted(first[20:]) == list(range(20))
    assert first[:20] != first[20:]


@pytest.mark.slow
def test_killed_two_worker_run_resumes_with_the_same_command(tmp_path, text_data, single_device_run):
    import time

    out = tmp_path / "runs"
    # 2 epochs, like the shared one-device reference: killed after epoch 1, the resumed cluster trains epoch 2.
    raw = distributed_config(text_data, tmp_path, "workers", epochs=2, distribute={"strategy": "multi_worker"})

    workers = start_two_workers(tmp_path, raw)
    deadline = time.time() + 300
    checkpoint_index = None
    while time.time() < deadline and checkpoint_index is None:
        time.sleep(0.2)
        found = files_while_written(out / "workers", "mw-*/checkpoints/last/ckpt-*.index")
        checkpoint_index = found[0] if found else None
    assert checkpoint_index is not None, "no checkpoint appeared"
    for worker in workers:  # the whole cluster dies after epoch 1
        worker.kill()
        worker.wait()
    run = only_run(out, "workers")
    assert json.loads((run / "status.json").read_text())["state"] == "running"

    logs = [finish(w) for w in start_two_workers(tmp_path, raw)]  # the same command again
    assert "Resuming" in logs[0], logs[0][-2000:]
    assert only_run(out, "workers") == run
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
    assert_same_training(single_device_run, run)


def test_global_batch_smaller_than_the_replicas_is_a_clear_error(tmp_path, text_data):
    raw = distributed_config(text_data, tmp_path, "tiny_batch", distribute={"strategy": "mirrored"})
    raw["training"]["batch_size"] = 1
    process = train_in_subprocess(tmp_path, raw, devices=2, tag="tiny_batch")
    out = process.communicate(timeout=300)[0]
    assert process.returncode == 2, out[-2000:]
    assert "training.batch_size = 1 is smaller than the 2 replicas" in out
    assert "Traceback" not in out
    runs = tmp_path / "runs" / "tiny_batch"
    assert not runs.exists() or not any(runs.iterdir())  # a failed start leaves no run directory
