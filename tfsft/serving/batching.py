"""Server-side batching: concurrent predict requests for the same signature merged into one model call.

A request whose client has gone away is dropped from its batch before the call: its handler was
cancelled, which cancels the future it waited on, and `_take` skips cancelled futures.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import numpy as np

from tfsft.serving.registry import Servable


@dataclass
class _Pending:
    arrays: dict
    future: asyncio.Future
    rows: int


class Batcher:
    """Merges concurrent predict requests for the same model version and signature into one call.

    Requests are grouped by model, version, signature and each input's dtype and non-batch shape,
    so their inputs always concatenate along axis 0. A group waits at most `timeout_ms` for more
    requests, runs up to `max_batch_size` rows at once and splits the outputs back. If the merged
    call fails, or its outputs are not per-row, each request runs alone so one bad request cannot
    fail the others.
    """

    def __init__(self, run, max_batch_size: int = 64, timeout_ms: float = 2.0):
        self._run = run  # async (servable, signature, arrays) -> outputs
        self.max_batch_size = max_batch_size
        self.timeout = timeout_ms / 1000.0
        self._pending: dict[tuple, list[_Pending]] = {}
        self._full: dict[tuple, asyncio.Event] = {}
        self._drainers: dict[tuple, asyncio.Task] = {}

    @staticmethod
    def can_batch(arrays: dict[str, np.ndarray]) -> bool:
        """TF Serving's batching rules: every input has a batch dimension, all of the same size."""
        sizes = {a.shape[0] if a.ndim else None for a in arrays.values()}
        return len(sizes) == 1 and None not in sizes

    async def submit(self, servable: Servable, signature: str, arrays: dict[str, np.ndarray]) -> dict:
        layout = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(arrays.items()))
        key = (servable.name, servable.version, signature, layout)
        pending = _Pending(arrays, asyncio.get_running_loop().create_future(), next(iter(arrays.values())).shape[0])
        queue = self._pending.setdefault(key, [])
        queue.append(pending)
        if sum(p.rows for p in queue) >= self.max_batch_size:
            self._full.setdefault(key, asyncio.Event()).set()
        if key not in self._drainers:
            self._drainers[key] = asyncio.create_task(self._drain(key, servable, signature))
        return await pending.future

    async def _drain(self, key: tuple, servable: Servable, signature: str) -> None:
        try:
            while self._pending.get(key):
                await self._wait_for_more(key)
                await self._run_batch(servable, signature, self._take(key))
        finally:
            self._drainers.pop(key, None)
            self._full.pop(key, None)
            for pending in self._pending.pop(key, []):  # only left behind if this task was cancelled
                if not pending.future.done():
                    pending.future.cancel()

    async def _wait_for_more(self, key: tuple) -> None:
        full = self._full.setdefault(key, asyncio.Event())
        if sum(p.rows for p in self._pending[key]) < self.max_batch_size:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(full.wait(), self.timeout)
        full.clear()

    def _take(self, key: tuple) -> list[_Pending]:
        queue, rows = self._pending[key], 0
        batch: list[_Pending] = []
        while queue and (not batch or rows + queue[0].rows <= self.max_batch_size):
            pending = queue.pop(0)
            if not pending.future.done():  # the client has gone away
                batch.append(pending)
                rows += pending.rows
        return batch

    async def _run_batch(self, servable: Servable, signature: str, batch: list[_Pending]) -> None:
        if len(batch) <= 1:
            await asyncio.gather(*(self._run_alone(servable, signature, p) for p in batch))
            return
        merged = {name: np.concatenate([p.arrays[name] for p in batch]) for name in batch[0].arrays}
        try:
            parts = _split_outputs(await self._run(servable, signature, merged), [p.rows for p in batch])
        except Exception:
            parts = None
        if parts is None:
            await asyncio.gather(*(self._run_alone(servable, signature, p) for p in batch))
            return
        for pending, part in zip(batch, parts):
            if not pending.future.done():
                pending.future.set_result(part)

    async def _run_alone(self, servable: Servable, signature: str, pending: _Pending) -> None:
        try:
            result = await self._run(servable, signature, pending.arrays)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(result)


def _split_outputs(outputs: dict, sizes: list[int]) -> list[dict] | None:
    total = sum(sizes)
    if any(np.ndim(v) == 0 or len(v) != total for v in outputs.values()):
        return None
    bounds = np.cumsum([0] + sizes)
    return [
        {name: value[start:stop] for name, value in outputs.items()} for start, stop in zip(bounds[:-1], bounds[1:])
    ]
