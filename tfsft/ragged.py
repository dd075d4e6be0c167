"""Ragged tensors built without their validity checks, while tfsft traces its own tokenizer.

Each `tf.RaggedTensor.from_*` factory checks by default that its row partition is well formed (splits start at 0,
never decrease, end at the number of values ...). Traced into a graph, every check is an `Assert` in a `cond` of its
own: TF Text's WordPiece tokenizer and KerasHub's packer build a dozen ragged tensors from the splits TF Text's
kernels return, and tracing those checks was half the CPU time of tracing MiniLM's tokenizer (0.55 -> 0.29 s,
984 -> 494 graph nodes, 2-core Xeon), all of it before the first training step and again in every exported model.
The splits come from TensorFlow's and TF Text's own kernels, which produce valid ones by construction; the
factories' own `validate=False` is there for such callers.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Iterator

import tensorflow as tf

_lock = threading.Lock()
_depth = 0  # threads inside `unvalidated_ragged_tensors`; the factories are restored when the last one leaves
_originals: dict[str, classmethod] = {}


def _factories_with_validate() -> list[str]:
    return [
        name
        for name, attribute in vars(tf.RaggedTensor).items()
        if name.startswith("from_")
        and isinstance(attribute, classmethod)
        and "validate" in inspect.signature(attribute.__func__).parameters
    ]


def _unvalidated(factory: classmethod) -> classmethod:
    function = factory.__func__

    @functools.wraps(function)
    def build(cls, *args, **kwargs):
        kwargs["validate"] = False
        return function(cls, *args, **kwargs)

    return classmethod(build)


@contextlib.contextmanager
def unvalidated_ragged_tensors() -> Iterator[None]:
    """Inside: every `tf.RaggedTensor.from_*` factory skips its checks, in every thread (they are class
    attributes). Re-entrant; outside, the factories are TensorFlow's own again."""
    global _depth
    with _lock:
        if _depth == 0:
            for name in _factories_with_validate():
                _originals[name] = vars(tf.RaggedTensor)[name]
                setattr(tf.RaggedTensor, name, _unvalidated(_originals[name]))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for name, factory in _originals.items():
                    setattr(tf.RaggedTensor, name, factory)
                _originals.clear()
