"""What a process does before its first TensorFlow or Keras import: a quiet start-up, and a lighter `import keras`
whose objects later garbage collections leave alone, right after which tfsft's choices on TensorFlow's Python layer
apply (`tfsft.runtime.apply_tensorflow_choices`: graph ops built without their Python stacks, grappler in one
round on CPUs).

`prepare_tensorflow_import()` is the first call of every tfsft entry point (and of the benchmark workers, which
measure what the commands do). It must run before TensorFlow or Keras is imported; afterwards it changes nothing
that has already been imported.
"""

from __future__ import annotations

import gc
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile

# Packages `import keras` imports whenever they are installed, for Keras features tfsft never uses:
# scikit-learn for `keras.wrappers` (SKLearnClassifier & co.) and matplotlib for `keras.visualization`.
# tfsft needs both (metrics, report plots) and imports them where it uses them, after training; at `import keras`
# they cost ~2 s of every command's start on a 2-core AVX2 EPYC (import of tfsft.trainer 6.4 -> 4.2 s, median of
# five alternating pairs). Keras 3.15 imports each in a try/except ImportError and keeps going without it. Hiding
# only `matplotlib.pyplot` still imported the `matplotlib` package and `matplotlib.patches` (~0.1 s, Xeon).
KERAS_EAGER_OPTIONAL_IMPORTS = ("sklearn", "matplotlib")


def prepare_tensorflow_import(verbose: bool = False) -> None:
    """Quiet TensorFlow's C++ start-up chatter (unless `verbose` or the user set a log level) and let the first
    `import keras` skip the optional packages above and run without garbage collections, its objects then frozen
    (`_KerasWithoutOptionalImports`).

    On a CPU-only machine TensorFlow prints an absl banner, "Could not find cuda drivers" and a `cuInit` CUDA
    *error* before any output, which reads like a failure. Level 3 hides C++ log lines below FATAL; the lines
    printed while TF loads its libraries (before absl logging is set up) ignore that level and are caught by
    `_QuietTensorFlowImport`. A level the user set themselves, or `--verbose`, shows everything as it comes.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _install_once(_KerasWithoutOptionalImports)
    # The level tfsft sets is inherited by the processes it starts (export check, tune trials); only a level set
    # by the user (without our mark) is left alone.
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ and os.environ.get("TFSFT_SET_TF_LOG_LEVEL") != "1":
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    os.environ["TFSFT_SET_TF_LOG_LEVEL"] = "1"
    if not verbose:
        _install_once(_QuietTensorFlowImport)


def _install_once(hook: type[_AroundFirstImport]) -> None:
    """Put `hook` first on the import path unless its package is imported already or it is there (the entry points
    and the library functions they call may both prepare the import)."""
    if hook.name not in sys.modules and not any(isinstance(finder, hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, hook())


class _AroundFirstImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs the first import of the top-level package `name` through `run(execute)`, once: the finder removes
    itself, the normal finders locate the package, and its module code runs inside `run`."""

    name = ""

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self.inner = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.inner
        module.__spec__.loader = self.inner
        self.run(lambda: self.inner.exec_module(module))

    def run(self, execute) -> None:
        raise NotImplementedError


class _QuietTensorFlowImport(_AroundFirstImport):
    """Runs the first `import tensorflow` with stderr (file descriptor 2) captured: the C++ lines TF prints
    while loading its libraries come before absl logging is set up and ignore TF_CPP_MIN_LOG_LEVEL. They are
    shown after all if the import fails."""

    name = "tensorflow"

    def run(self, execute) -> None:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                execute()
            except BaseException:
                os.dup2(saved, 2)
                captured.seek(0)
                sys.stderr.write(captured.read().decode("utf-8", errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        _drop_duplicate_tf_handler()


class _KerasWithoutOptionalImports(_AroundFirstImport):
    """Runs the first `import keras` with the packages in KERAS_EAGER_OPTIONAL_IMPORTS (those not imported yet)
    reported missing, as Python reports a package whose `sys.modules` entry is None; they import normally
    afterwards. In this process `keras.wrappers` and `keras.visualization` then act as if they were not installed.
    The import runs with garbage collection off, and what it leaves is frozen (see `run`). Then the runtime choices
    that act on the imported TensorFlow apply (`tfsft.runtime.apply_tensorflow_choices`)."""

    name = "keras"

    def run(self, execute) -> None:
        hidden = [name for name in KERAS_EAGER_OPTIONAL_IMPORTS if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]
        collecting = gc.isenabled()
        gc.disable()
        try:
            execute()
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
            # Importing Keras with TensorFlow leaves ~300,000 objects tracked by the garbage collector; each full
            # collection then walks all of them (~0.1 s), five times during the import and again while the model
            # is built and its training step traced: 1.1 s of the 15 s before step 1 on the 2-core Xeon. The
            # modules, classes and functions of an import live as long as the process, so after it they move to
            # the collector's permanent generation (`gc.freeze`, what CPython offers long-lived processes for
            # this) and later collections see only the objects made after the import. The import's own garbage
            # cycles are frozen with it and never freed: ~120,000 objects, 2 MB of resident memory.
            gc.freeze()
            if collecting:
                gc.enable()
        from tfsft.runtime import apply_tensorflow_choices

        apply_tensorflow_choices()  # Keras imported TensorFlow: before any graph is built


def _drop_duplicate_tf_handler() -> None:
    """TF adds its own handler to the 'tensorflow' logger when the root logger had none at import time; with
    ours on the root too, every TF message would be printed twice."""
    tf_logger = logging.getLogger("tensorflow")
    if logging.getLogger().handlers and tf_logger.handlers and tf_logger.propagate:
        for handler in list(tf_logger.handlers):
            tf_logger.removeHandler(handler)
