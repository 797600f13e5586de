"""Dynamic batching with a stand-in model: rows of concurrent requests share calls, each gets its own slice."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tfpipe.serving.batching import Batcher


class SlowDouble:
    """Doubles x; each call takes `delay` seconds, so requests pile up while it runs."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, columns):
        self.sizes.append(len(columns["x"]))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if (columns["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": columns["x"] * 2.0}


async def _run(model, requests, *, max_batch_size=8, timeout=0.002):
    executor = ThreadPoolExecutor(1, thread_name_prefix="model-test")
    batcher = Batcher(model, executor, max_batch_size=max_batch_size, timeout=timeout)
    batcher.start()
    futures = [batcher.submit({"x": np.asarray(rows, dtype=np.float32)}, len(rows)) for rows in requests]
    results = await asyncio.gather(*futures, return_exceptions=True)
    await batcher.close()
    executor.shutdown()
    return results


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    model = SlowDouble()
    requests = [[float(i)] for i in range(40)] + [[100.0, 101.0, 102.0]]
    results = asyncio.run(_run(model, requests))
    for rows, result in zip(requests, results, strict=True):
        assert result["y"].tolist() == [2 * r for r in rows]
    assert sum(model.sizes) == 43
    assert len(model.sizes) < 41 and max(model.sizes) > 1
    assert max(model.sizes) <= 8
    assert model.threads == {"model-test_0"}  # never on the event loop's thread


def test_a_request_larger_than_the_batch_runs_alone():
    model = SlowDouble(0)
    results = asyncio.run(_run(model, [list(range(20))], max_batch_size=8))
    assert results[0]["y"].tolist() == [2.0 * i for i in range(20)]
    assert model.sizes == [20]


def test_a_failing_call_fails_the_requests_of_its_batch_only():
    model = SlowDouble(0)
    # Two rows per call: [1, 2] and [-1, 3].
    results = asyncio.run(_run(model, [[1.0], [2.0], [-1.0], [3.0]], max_batch_size=2, timeout=0))
    assert [r["y"].tolist() for r in results[:2]] == [[2.0], [4.0]]
    assert all(isinstance(r, ValueError) for r in results[2:])
    assert model.sizes == [2, 2]


def test_closing_finishes_what_is_queued_and_refuses_more():
    async def scenario():
        model = SlowDouble(0.01)
        executor = ThreadPoolExecutor(1)
        batcher = Batcher(model, executor, max_batch_size=2, timeout=0)
        batcher.start()
        futures = [batcher.submit({"x": np.asarray([float(i)], np.float32)}, 1) for i in range(6)]
        await batcher.close()
        assert all(f.done() and not f.exception() for f in futures)
        with pytest.raises(RuntimeError, match="unloading"):
            batcher.submit({"x": np.asarray([1.0], np.float32)}, 1)
        executor.shutdown()

    asyncio.run(scenario())
