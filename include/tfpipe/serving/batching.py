"""Dynamic batching: concurrent requests' rows run as one model call, each request gets its slice back.

One `Batcher` per loaded version. Requests queue their rows; whenever the model is free the batcher
takes what is queued, waits at most `timeout` for more rows (up to `max_batch_size`), concatenates them
and runs one call in the version's own model thread, off the event loop. While a call runs, new requests
queue up, so under load batches grow by themselves. The wait is only spent while `more_coming()` says
requests have arrived that have not queued their rows yet (the server counts them): a lone request at low
load does not wait for company that is not on its way. A request with more rows than `max_batch_size`
runs alone, in one call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Columns = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclass
class _Item:
    columns: Columns
    rows: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(
        self,
        run: Callable[[Columns], Outputs],
        executor: Executor,
        *,
        max_batch_size: int,
        timeout: float,
        on_batch: Callable[[int], None] | None = None,
        more_coming: Callable[[], bool] | None = None,
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.timeout = timeout
        self._on_batch = on_batch
        self._more_coming = more_coming or (lambda: True)
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.calls = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    def submit(self, columns: Columns, rows: int) -> asyncio.Future:
        """Queue a request's rows; the future resolves to its slice of every output (or the model's error)."""
        if self._closing:
            raise RuntimeError("this version is unloading")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(columns, rows, future))
        self._queued_rows += rows
        self._wakeup.set()
        return future

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def _wait(self, timeout: float | None) -> bool:
        self._wakeup.clear()
        if timeout is None:
            await self._wakeup.wait()
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
            return True
        except TimeoutError:
            return False

    def _take(self) -> list[_Item]:
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
            item = self._queue.popleft()
            batch.append(item)
            rows += item.rows
        self._queued_rows -= rows
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closing:
                    return
                await self._wait(None)
            if self.timeout > 0 and not self._closing:
                deadline = loop.time() + self.timeout
                while self._queued_rows < self.max_batch_size and self._more_coming():
                    remaining = deadline - loop.time()
                    if remaining <= 0 or not await self._wait(remaining):
                        break
            batch = self._take()
            await self._call(loop, batch)

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        if len(batch) == 1:
            columns = batch[0].columns
        else:
            columns = {name: np.concatenate([item.columns[name] for item in batch]) for name in batch[0].columns}
        rows = sum(item.rows for item in batch)
        if self._on_batch is not None:
            self._on_batch(rows)
        self.calls += 1
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, columns)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():
                item.future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end

    async def close(self) -> None:
        """Finish every queued request, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
