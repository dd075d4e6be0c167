"""CPU runtime choices that must be made before TensorFlow is imported, and the record of why.

TensorFlow's x86 wheels carry two sets of CPU kernels for matmuls, convolutions and their fusions: Eigen's and
oneDNN's. TensorFlow switches oneDNN on by itself only on CPUs with AVX-512 VNNI / BF16 or AMX; everywhere else
(AVX2 + FMA: most laptops, AMD EPYC before Zen 4, many cloud VMs) it runs Eigen's kernels. On such a CPU
(AMD EPYC, AVX2 + FMA, no AVX-512; TensorFlow 2.21) fine-tuning MiniLM-L6 trained 1.18x and predicted 1.10x as
fast with oneDNN on, end to end and side by side in one run (`scripts/bench_train.py --eigen`; 2.3x on a
fixed-shape training-step micro-benchmark). So `auto`
turns oneDNN on for every x86-64 CPU with AVX2 + FMA. The switch is read once, when TensorFlow loads its
kernels, which is why this module must run before the first `import tensorflow` and why it never imports it.

A user who set `TF_ENABLE_ONEDNN_OPTS` themselves keeps their setting. Every choice is kept in `CHOICES` with its
reason, and `log_choices` writes them once at the start of a run.

One choice acts on TensorFlow's Python layer once it is imported (`apply_tensorflow_choices`; tfsft's Keras
import hook and `log_choices` call it): graph ops are built without recording the Python stack that built them.
TensorFlow keeps that stack only to print it under an error raised inside a graph; recording it was a quarter of
the CPU time of tracing MiniLM-L6's training step (below). Without it such an error still names the failing op
(`Detected at node .../GatherV2`) and says "<stack traces unavailable>" where the Python lines would be;
`TFSFT_OP_TRACEBACKS=1` keeps them, for whoever debugs a custom backbone or head.

A second one sets how grappler, TensorFlow's graph optimizer, treats every function tfsft runs on a CPU-only
machine: one round of its passes instead of two, without its memory optimizer, its layout optimizer and its MLIR
(TFG) passes. Optimizing MiniLM-L6's training step took 1.15-1.42 s of the time before the first step (its own log,
`TF_CPP_VMODULE=meta_optimizer=1`), 0.40-0.61 s with these settings; on a CPU the memory optimizer (GPU memory
swapping) and the layout optimizer (GPU convolution layouts) changed nothing in that graph, and the second round
only removed 13 StopGradient, 11 Shape, 11 Const and 6 duplicate Square nodes out of ~2,700. With a GPU visible
TensorFlow's defaults stay; `TFSFT_GRAPH_OPTIMIZATION=default` keeps them anywhere.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import platform
import re
import sys
from dataclasses import dataclass
from functools import lru_cache

ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset
    machine: str

    @property
    def isa(self) -> str:
        """The widest vector ISA: avx512, avx2 or older."""
        if "avx512f" in self.flags:
            return "avx512"
        if "avx2" in self.flags and "fma" in self.flags:
            return "avx2"
        return "older"

    def describe(self) -> str:
        shown = [f for f in ISA_FLAGS if f in self.flags]
        amx_or_512 = sorted(f for f in self.flags if f.startswith(("avx512", "amx")) and f not in shown)
        return f"{self.model} ({self.machine}; {' '.join(shown + amx_or_512) or 'no SIMD flags found'})"


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """CPU model name and instruction-set flags from /proc/cpuinfo (Linux); a best effort elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())  # the first processor's entry
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return CpuInfo(model=model, flags=frozenset(flags), machine=platform.machine())


@dataclass(frozen=True)
class Choice:
    setting: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.setting} = {self.value}: {self.reason}"


CHOICES: list[Choice] = []


# TensorFlow switches oneDNN on by itself when the CPU has one of these (tensorflow/core/util/util.cc, IsMKLEnabled).
TF_ONEDNN_DEFAULT_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"})
CHOSEN_BY_TFSFT = "TFSFT_SET_ONEDNN_OPTS"  # marks the variable as tfsft's choice for child processes


def _onednn_choice(info: CpuInfo, environ) -> Choice:
    user = environ.get("TF_ENABLE_ONEDNN_OPTS")
    if user is not None and environ.get(CHOSEN_BY_TFSFT) != user:
        return Choice(
            "oneDNN kernels",
            "on" if user.strip() not in ("0", "false", "False") else "off",
            f"TF_ENABLE_ONEDNN_OPTS={user} was set by you",
        )
    if info.machine.lower() not in ("x86_64", "amd64"):
        return Choice("oneDNN kernels", "TensorFlow's default", f"not an x86-64 CPU ({info.machine})")
    if info.isa == "older":
        return Choice("oneDNN kernels", "TensorFlow's default", "the CPU lacks AVX2 + FMA")
    environ["TF_ENABLE_ONEDNN_OPTS"] = environ[CHOSEN_BY_TFSFT] = "1"
    tf_turns_it_on = sorted(info.flags & TF_ONEDNN_DEFAULT_FLAGS)
    if tf_turns_it_on:  # set anyway, so that every child process (export check, tuner trials) agrees
        return Choice("oneDNN kernels", "on", f"TensorFlow's own default on this CPU ({' '.join(tf_turns_it_on)})")
    return Choice(
        "oneDNN kernels",
        "on",
        f"{info.isa.upper()} CPU without AVX-512 VNNI/BF16 or AMX, where TensorFlow would use its Eigen kernels; "
        "on an AVX2 CPU oneDNN trained MiniLM 1.18x and predicted 1.10x as fast (scripts/bench_train.py --eigen)",
    )


OP_TRACEBACKS = "graph op tracebacks"
OP_TRACEBACKS_ENV = "TFSFT_OP_TRACEBACKS"


def _op_traceback_choice(environ) -> Choice:
    asked = environ.get(OP_TRACEBACKS_ENV)
    if asked is not None and asked.strip().lower() not in ("", "0", "false", "off", "no"):
        return Choice(OP_TRACEBACKS, "on", f"{OP_TRACEBACKS_ENV}={asked} was set by you")
    return Choice(
        OP_TRACEBACKS,
        "off",
        "recording the Python stack of every op TensorFlow builds took a quarter of the CPU time of tracing "
        "MiniLM-L6's training step (median 2.55 -> 1.92 s, 2-core Xeon); an error inside a graph still names its op. "
        f"{OP_TRACEBACKS_ENV}=1 keeps the stacks",
    )


GRAPH_OPTIMIZATION = "graph optimization"
GRAPH_OPTIMIZATION_ENV = "TFSFT_GRAPH_OPTIMIZATION"
ONE_ROUND = "one round (CPU)"


def _graph_optimization_choice(environ) -> Choice:
    asked = environ.get(GRAPH_OPTIMIZATION_ENV)
    value = "" if asked is None else asked.strip().lower()
    if value in ("default", "tensorflow", "full", "0", "off", "false", "no"):
        return Choice(GRAPH_OPTIMIZATION, "TensorFlow's default", f"{GRAPH_OPTIMIZATION_ENV}={asked} was set by you")
    # An unknown value is said in the log line rather than refused: the setting changes speed, never results.
    unknown = (
        ""
        if value in ("", "auto", "one", "one round")
        else f"{GRAPH_OPTIMIZATION_ENV}={asked} is not a value tfsft knows; "
    )
    return Choice(
        GRAPH_OPTIMIZATION,
        ONE_ROUND,
        f"{unknown}grappler optimizing MiniLM-L6's training step took 1.15-1.42 s before the first step, 0.40-0.61 s "
        "in one round without its memory, layout and MLIR passes (2-core Xeon), for the same graph but 13 "
        f"StopGradient and a few Shape/Const nodes; {GRAPH_OPTIMIZATION_ENV}=default keeps TensorFlow's two rounds",
    )


def configure(environ=None) -> list[Choice]:
    """Make the choices (idempotent). The oneDNN one must run before TensorFlow is imported to take effect."""
    environ = os.environ if environ is None else environ
    if CHOICES:
        return CHOICES
    choice = _onednn_choice(cpu_info(), environ)
    if "tensorflow" in sys.modules and environ is os.environ:
        choice = Choice(choice.setting, "unchanged", "TensorFlow was imported before tfsft could choose")
    CHOICES.append(choice)
    CHOICES.append(_op_traceback_choice(environ))
    CHOICES.append(_graph_optimization_choice(environ))
    return CHOICES


def apply_tensorflow_choices(choices: list[Choice] | None = None) -> dict[str, bool]:
    """Apply the choices that act on the imported TensorFlow (idempotent): {setting: whether it now holds}."""
    wanted = {c.setting: c.value for c in (configure() if choices is None else choices)}
    imported = "tensorflow" in sys.modules
    applied = {OP_TRACEBACKS: False, GRAPH_OPTIMIZATION: False}
    if imported and wanted.get(OP_TRACEBACKS) == "off":
        applied[OP_TRACEBACKS] = _build_ops_without_tracebacks()
    if imported and wanted.get(GRAPH_OPTIMIZATION) == ONE_ROUND:
        applied[GRAPH_OPTIMIZATION] = _optimize_graphs_in_one_round()
    return applied


def _optimize_graphs_in_one_round() -> bool:
    """Grappler's settings for every function called from now on, on a machine without a GPU; False with one.

    Private TensorFlow (checked against 2.21, the pinned minor): the eager context's `_config`, the ConfigProto
    each thread's function-call options are made from, and its per-thread cache of them (`_thread_local_data`).
    `tf.config.optimizer.set_experimental_options` reaches only the layout optimizer of these four."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    if tf.config.list_physical_devices("GPU"):
        return False  # measured on CPUs only; on a GPU the memory and layout optimizers do their work
    ctx = context.context()
    config = config_pb2.ConfigProto()
    if ctx._config is not None:
        config.CopyFrom(ctx._config)
    rewrite, options = config.graph_options.rewrite_options, rewriter_config_pb2.RewriterConfig
    rewrite.meta_optimizer_iterations = options.ONE
    rewrite.memory_optimization = options.NO_MEM_OPT
    rewrite.layout_optimizer = options.OFF
    rewrite.disable_tfg_optimizer = True
    ctx._config = config
    ctx._thread_local_data.function_call_options = None  # this thread's options, made before, are made again
    return True


def _build_ops_without_tracebacks() -> bool:
    # Private TensorFlow: every graph op is made by `ops._create_c_op`, whose `extract_traceback` switch (checked
    # against TensorFlow 2.21, the pinned minor) decides whether the Python stack is recorded with it. Callers
    # look the function up in the module at each call, so replacing it there reaches all of them.
    from tensorflow.python.framework import ops

    create = ops._create_c_op
    if getattr(create, "tfsft_without_tracebacks", False):
        return True
    if "extract_traceback" not in inspect.signature(create).parameters:
        return False  # a TensorFlow without the switch: ops keep their stacks
    without = functools.partial(create, extract_traceback=False)
    without.tfsft_without_tracebacks = True  # type: ignore[attr-defined]
    ops._create_c_op = without
    return True


def onednn_active() -> bool | None:
    """Whether the loaded TensorFlow runs oneDNN kernels (None if it cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private, but the only switch TF reports

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


_choices_logged = False  # log_choices runs once per process (train, then evaluate and export, call it)


def log_choices(logger: logging.Logger | None = None) -> None:
    """Log the CPU and every runtime choice once, with its reason, plus TF's thread pools as they are."""
    logger = logger or logging.getLogger("tfsft")
    global _choices_logged
    if _choices_logged:
        return
    _choices_logged = True
    import tensorflow as tf

    applied = apply_tensorflow_choices()
    logger.info("CPU: %s", cpu_info().describe())
    for choice in configure():
        if choice.setting == OP_TRACEBACKS and choice.value == "off" and not applied[OP_TRACEBACKS]:
            choice = Choice(OP_TRACEBACKS, "on", f"TensorFlow {tf.__version__} has no switch for them")
        if choice.setting == GRAPH_OPTIMIZATION and choice.value == ONE_ROUND and not applied[GRAPH_OPTIMIZATION]:
            choice = Choice(GRAPH_OPTIMIZATION, "TensorFlow's default", "a GPU is visible (measured on CPUs only)")
        active = onednn_active() if choice.setting == "oneDNN kernels" else None
        suffix = "" if active is None else f" (TensorFlow reports oneDNN {'on' if active else 'off'})"
        logger.info("auto: %s%s", choice, suffix)
    intra = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    inter = tf.config.threading.get_inter_op_parallelism_threads() or os.cpu_count()
    logger.info(
        "auto: TensorFlow thread pools = %s intra-op / %s inter-op: TensorFlow's default (one per core)", intra, inter
    )


def tensorflow_build() -> str:
    """TensorFlow version and the build facts that decide CPU speed, for benchmark headers."""
    import tensorflow as tf

    info = tf.sysconfig.get_build_info()
    parts = [f"tensorflow {tf.__version__}", f"oneDNN {'on' if onednn_active() else 'off'}"]
    if info.get("is_cuda_build"):
        parts.append("CUDA build")
    flags = re.findall(r"-m(avx\w*|fma)", " ".join(tf.sysconfig.get_compile_flags()))
    if flags:
        parts.append("compiled with " + ",".join(sorted(set(flags))))
    return ", ".join(parts)
