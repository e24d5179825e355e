"""Dynamic batching: merge concurrent requests into one session call, then split the results.

One collector task takes the oldest waiting request and every later one with the same
signature (dtypes and non-batch dims) up to `max_batch_size` rows, waiting at most
`max_delay_s` after the oldest arrived. While a batch runs, new requests pile up, so
under load the next batch is full without any added delay. If a merged call fails, each
request of it runs alone, so an error stays with the request that caused it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
Tensors = dict[str, Array]
RunFn = Callable[[Tensors], Tensors]


@dataclass
class _Pending:
    inputs: Tensors
    rows: int
    signature: Hashable
    future: asyncio.Future[Tensors]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    """What one session call did, for metrics."""

    rows: int
    requests: int
    run_seconds: float
    queue_seconds: tuple[float, ...]


class Batcher:
    """Queue + collector task; `submit` returns this request's own slice of the outputs."""

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        *,
        max_batch_size: int,
        max_delay_s: float,
        concurrency: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._run = run
        self._executor = executor
        self._max_rows = max_batch_size
        self._max_delay = max_delay_s
        self._slots = asyncio.Semaphore(concurrency)
        self._on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False

    def start(self) -> None:
        """Start the collector task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        """Finish every queued and running batch, then stop the collector."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @property
    def depth(self) -> int:
        """Requests waiting for a session call."""
        return len(self._pending)

    async def submit(self, inputs: Tensors, rows: int, signature: Hashable) -> Tensors:
        """Queue one request; returns its outputs or raises its own error."""
        if self._closing:
            raise RuntimeError("batcher is stopped")
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(inputs, rows, signature, future))
        self._wakeup.set()
        return await future

    async def _collect(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            await self._fill_window()
            group = self._take_group()
            task = asyncio.get_running_loop().create_task(self._execute(group))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _fill_window(self) -> None:
        """Wait until the oldest request's batch is full or its delay has passed."""
        first = self._pending[0]
        deadline = first.enqueued + self._max_delay
        while not self._closing and self._rows_like(first) < self._max_rows:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _rows_like(self, first: _Pending) -> int:
        return sum(p.rows for p in self._pending if p.signature == first.signature)

    def _take_group(self) -> list[_Pending]:
        first = self._pending.popleft()
        group, rows, keep = [first], first.rows, deque[_Pending]()
        while self._pending:
            item = self._pending.popleft()
            if item.signature == first.signature and rows + item.rows <= self._max_rows:
                group.append(item)
                rows += item.rows
            else:
                keep.append(item)
        self._pending = keep
        return [p for p in group if not p.future.done()]  # drop cancelled callers

    async def _execute(self, group: list[_Pending]) -> None:
        try:
            if group:
                await self._execute_group(group)
        finally:
            self._slots.release()

    async def _execute_group(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        queued = tuple(started - p.enqueued for p in group)
        rows = sum(p.rows for p in group)
        if len(group) == 1:
            merged = group[0].inputs
        else:
            merged = {
                name: np.concatenate([p.inputs[name] for p in group]) for name in group[0].inputs
            }
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, merged)
            parts = _split(outputs, [p.rows for p in group])
        except Exception as exc:  # onnxruntime raises untyped errors; keep them per request
            if len(group) == 1:
                _resolve(group[0].future, exc=exc)
                return
            await self._one_by_one(group)
            return
        if self._on_batch is not None:
            self._on_batch(BatchStats(rows, len(group), time.perf_counter() - started, queued))
        for pending, part in zip(group, parts, strict=True):
            _resolve(pending.future, value=part)

    async def _one_by_one(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        for pending in group:
            try:
                value = await loop.run_in_executor(self._executor, self._run, pending.inputs)
            except Exception as exc:  # per-request error, as above
                _resolve(pending.future, exc=exc)
            else:
                _resolve(pending.future, value=value)


def _split(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    """Cut every output along dimension 0 into the callers' row counts."""
    total = sum(rows)
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise ValueError(
                f"output {name!r} has {arr.shape} rows, expected {total}: cannot split"
            )
    bounds = np.cumsum([0, *rows])
    return [
        {name: arr[int(a) : int(b)] for name, arr in outputs.items()}
        for a, b in itertools.pairwise(bounds)
    ]


def _resolve(
    future: asyncio.Future[Tensors],
    *,
    value: Tensors | None = None,
    exc: BaseException | None = None,
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert value is not None
        future.set_result(value)
