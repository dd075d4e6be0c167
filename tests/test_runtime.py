"""The CPU runtime choices tfsft makes before TensorFlow loads, and that the test process runs with them; the graph
op tracebacks it switches off and grappler's one round, once TensorFlow is imported."""

import subprocess
import sys

import numpy as np
import pytest

from tfsft.runtime import (
    GRAPH_OPTIMIZATION,
    OP_TRACEBACKS,
    CpuInfo,
    _onednn_choice,
    _op_traceback_choice,
    apply_tensorflow_choices,
    cpu_info,
)


def cpu(*flags, machine="x86_64"):
    return CpuInfo(model="test CPU", flags=frozenset(flags), machine=machine)


@pytest.mark.parametrize(
    "info,expected",
    [
        (cpu("avx", "avx2", "fma"), "on"),  # AVX2-only: TF alone would stay on Eigen
        (cpu("avx2", "fma", "avx512f", "avx512bw"), "on"),  # AVX-512 without VNNI: likewise
        (cpu("avx", "sse4_2"), "TensorFlow's default"),  # no AVX2: leave TF alone
        (cpu("asimd", machine="aarch64"), "TensorFlow's default"),  # ARM: TF decides
    ],
)
def test_onednn_choice_by_cpu(info, expected):
    environ = {}
    choice = _onednn_choice(info, environ)
    assert choice.value == expected
    assert (environ.get("TF_ENABLE_ONEDNN_OPTS") == "1") == (expected == "on")
    assert choice.reason  # every choice says why


def test_the_reason_says_when_tensorflow_would_have_chosen_onednn_itself():
    sapphire_rapids = cpu("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")
    assert _onednn_choice(sapphire_rapids, {}).reason == "TensorFlow's own default on this CPU (amx_tile avx512_vnni)"
    assert "Eigen" in _onednn_choice(cpu("avx2", "fma"), {}).reason


@pytest.mark.parametrize("value,expected", [("0", "off"), ("1", "on")])
def test_a_users_setting_wins(value, expected):
    environ = {"TF_ENABLE_ONEDNN_OPTS": value}
    choice = _onednn_choice(cpu("avx2", "fma"), environ)
    assert choice.value == expected and "set by you" in choice.reason
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": value}


def test_importing_tfsft_before_tensorflow_switches_onednn_on_for_avx2():
    if cpu_info().isa == "older" or cpu_info().machine != "x86_64":
        pytest.skip(f"the choice only applies to x86-64 AVX2 CPUs; this one is {cpu_info().describe()}")
    probe = (
        "import os; os.environ.pop('TF_ENABLE_ONEDNN_OPTS', None); import tfsft, tensorflow; "
        "from tfsft.runtime import onednn_active; print('active', onednn_active())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    assert "active True" in out.stdout, out.stderr[-2000:]


def test_cpu_description_names_model_and_isa_flags():
    text = cpu("avx2", "fma", "avx512f", "amx_tile").describe()
    assert "test CPU" in text and "avx2" in text and "avx512f" in text and "amx_tile" in text


# ----------------------------------------------------------------------------------------- graph op tracebacks
@pytest.mark.parametrize("value,expected", [(None, "off"), ("0", "off"), ("1", "on"), ("yes", "on")])
def test_op_tracebacks_are_off_unless_asked_for(value, expected):
    environ = {} if value is None else {"TFSFT_OP_TRACEBACKS": value}
    choice = _op_traceback_choice(environ)
    assert choice.value == expected and choice.reason
    assert ("set by you" in choice.reason) == (expected == "on")


def _gather_graph():
    import tensorflow as tf

    @tf.function(autograph=False)
    def gather(ids):
        return tf.gather(tf.ones([5, 2]), ids)

    return gather


def test_ops_built_after_the_choice_carry_no_python_stack_and_errors_still_name_the_op(monkeypatch):
    import tensorflow as tf
    from tensorflow.python.framework import ops

    # Start from TensorFlow's own function (a tfsft run earlier in this process applied the choice already); the
    # module's function as it was comes back after the test.
    create = ops._create_c_op
    monkeypatch.setattr(ops, "_create_c_op", create.func if getattr(create, "tfsft_without_tracebacks", 0) else create)
    on, off = _op_traceback_choice({"TFSFT_OP_TRACEBACKS": "1"}), _op_traceback_choice({})
    assert apply_tensorflow_choices([on]) == {OP_TRACEBACKS: False, GRAPH_OPTIMIZATION: False}
    with_stacks = _gather_graph().get_concrete_function(tf.TensorSpec([None], tf.int32))
    gather_op = next(op for op in with_stacks.graph.get_operations() if op.type == "GatherV2")
    assert any("test_runtime.py" in frame.filename for frame in gather_op.traceback)

    assert apply_tensorflow_choices([off])[OP_TRACEBACKS] is True
    assert apply_tensorflow_choices([off])[OP_TRACEBACKS] is True  # idempotent: not wrapped twice
    assert ops._create_c_op.func is not ops._create_c_op  # one partial around the original
    gather = _gather_graph()
    graph = gather.get_concrete_function(tf.TensorSpec([None], tf.int32)).graph
    assert all(op.traceback is None for op in graph.get_operations())
    np.testing.assert_array_equal(gather(tf.constant([0, 4])), np.ones([2, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)GatherV2.*indices\[1\] = 7 is not in \[0, 5\)"):
        gather(tf.constant([1, 7]))


def test_the_keras_import_of_an_entry_point_applies_the_choice():
    probe = (
        "from tfsft.cli import prepare_tensorflow_import; prepare_tensorflow_import(); import keras; "
        "from tensorflow.python.framework import ops; "
        "print('without', getattr(ops._create_c_op, 'tfsft_without_tracebacks', False))"
    )
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"}
    for extra, expected in (({}, "without True"), ({"TFSFT_OP_TRACEBACKS": "1"}, "without False")):
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env={**env, **extra}
        )
        assert expected in out.stdout, out.stderr[-2000:]


# ----------------------------------------------------------------------------------------- graph optimization


def test_graph_optimization_is_one_round_unless_the_user_keeps_tensorflows_default():
    from tfsft.runtime import ONE_ROUND, _graph_optimization_choice

    choice = _graph_optimization_choice({})
    assert choice.value == ONE_ROUND and "1.15-1.42 s" in choice.reason
    kept = _graph_optimization_choice({"TFSFT_GRAPH_OPTIMIZATION": "default"})
    assert kept.value == "TensorFlow's default" and "set by you" in kept.reason
    typo = _graph_optimization_choice({"TFSFT_GRAPH_OPTIMIZATION": "defualt"})
    assert typo.value == ONE_ROUND and typo.reason.startswith("TFSFT_GRAPH_OPTIMIZATION=defualt is not a value")
    assert "not a value" not in _graph_optimization_choice({"TFSFT_GRAPH_OPTIMIZATION": "auto"}).reason


def test_functions_an_entry_point_runs_are_optimized_in_one_round_on_a_cpu():
    probe = (
        "from tfsft.cli import prepare_tensorflow_import; prepare_tensorflow_import(); import keras, threading; "
        "import tensorflow as tf; from tensorflow.python.eager import context; "
        "from tensorflow.core.protobuf import config_pb2; "
        "show = lambda: print('rewrite', config_pb2.ConfigProto.FromString("
        "context.context().function_call_options.config_proto_serialized).graph_options.rewrite_options); "
        "show(); t = threading.Thread(target=show); t.start(); t.join(); "  # a thread started later: the same
        "print('answer', float(tf.function(lambda x: tf.reduce_sum(x * 2.0))(tf.ones([3]))))"
    )
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    for extra, one_round in (({}, True), ({"TFSFT_GRAPH_OPTIMIZATION": "default"}, False)):
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env={**env, **extra}
        )
        assert "answer 6.0" in out.stdout, out.stderr[-2000:]
        shown = [line for line in out.stdout.splitlines() if not line.startswith("answer")]
        settings = ("meta_optimizer_iterations: ONE", "memory_optimization: NO_MEM_OPT", "layout_optimizer: OFF")
        for setting in (*settings, "disable_tfg_optimizer: true"):
            assert (out.stdout.count(setting) == 2) == one_round, (extra, shown)
