"""The sampled request/prediction log the monitoring DAG reads (skew, drift, quality proxies).

One JSON line per sampled predict request, in `requests.jsonl` under the configured folder, rotated by
size into `requests.jsonl.1` (the newest full file) ... `requests.jsonl.<backups>`:

    {"ts": "2026-05-09T12:00:00.123456+00:00", "model": "big_tipper", "version": "3", "role": "canary",
     "key": "9f86d081884c7d65" | null, "instances": [{"fare": 12.5, "company": "", ...}],  # pragma: allowlist secret
     "predictions": [0.42], "latency_ms": 1.7, "status": 200}

`key` is a hash of the sticky key, never the key itself. `instances` are the features as the model got
them, after the missing-value defaults (a missing float, NaN, is written as null; JSON has no NaN).
`predictions` is null when the request failed. A request the canary failed and stable answered is one
line, stable's, with `"fallback_from": "<canary version>"`.

Logging never slows or fails a request: the request path only puts a tuple on a bounded queue, and a
writer thread formats and writes. When the queue is full (the disk is slower than the traffic) the line
is dropped and counted in tfpipe_serving_request_log_dropped_total.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tfpipe.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)
FILE_NAME = "requests.jsonl"
QUEUE_SIZE = 10_000
WRITE_INTERVAL = 0.05  # seconds between the writer's rounds
_STOP = object()


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def hash_key(key: str | None) -> str | None:
    if not key:
        return None
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class RequestLog:
    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        sample_rate: float,
        max_bytes: int,
        backups: int,
        metrics: ServingMetrics | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.sample_rate = sample_rate
        self.max_bytes = max_bytes
        self.backups = backups
        self.metrics = metrics
        self.written = 0
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._random = random.Random()
        self._file: Any = None
        self._size = 0
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        return self.sample_rate >= 1.0 or (self.sample_rate > 0 and self._random.random() < self.sample_rate)

    def record(
        self,
        *,
        model: str,
        version: str,
        role: str,
        key: str | None,
        columns: dict[str, np.ndarray],
        predictions: Any,
        latency_ms: float,
        status: int,
        fallback_from: str | None = None,
    ) -> None:
        """Queue one request's line (call only for sampled requests); never blocks, never raises."""
        now = dt.datetime.now(dt.UTC)
        entry = (now, model, version, role, key, columns, predictions, latency_ms, status, fallback_from)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._drop()

    def _drop(self, count: int = 1) -> None:
        self.dropped += count
        if self.metrics is not None:
            self.metrics.request_log_dropped.inc(count)

    @staticmethod
    def _line(entry: tuple) -> bytes:
        ts, model, version, role, key, columns, predictions, latency_ms, status, fallback_from = entry
        names = list(columns)
        values = [columns[name].tolist() for name in names]
        instances = [
            {name: _text(value) for name, value in zip(names, row, strict=True)} for row in zip(*values, strict=True)
        ]
        if isinstance(predictions, np.ndarray):
            predictions = predictions.tolist()
        document = {
            "ts": ts.isoformat(),
            "model": model,
            "version": version,
            "role": role,
            "key": hash_key(key),
            "instances": instances,
            "predictions": predictions,
            "latency_ms": round(latency_ms, 3),
            "status": status,
        }
        if fallback_from is not None:
            document["fallback_from"] = fallback_from
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open by the writer thread
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{FILE_NAME}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{FILE_NAME}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{FILE_NAME}.1"))
        self._open()

    def _write(self, line: bytes) -> None:
        if self._file is None:
            self._open()
        if self._size > 0 and self._size + len(line) > self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._size += len(line)
        self.written += 1
        if self.metrics is not None:
            self.metrics.request_log_lines.inc()

    def _run(self) -> None:
        # Wakes every WRITE_INTERVAL and writes what queued meanwhile in one go: one wake-up per request
        # would make the writer compete with the event loop for the GIL on every request.
        stopping = False
        while not stopping:
            entries = [self._queue.get()]
            time.sleep(WRITE_INTERVAL)
            while True:
                try:
                    entries.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for entry in entries:
                if entry is _STOP:
                    stopping = True
                elif isinstance(entry, threading.Event):  # flush() waits for everything queued before it
                    self._flush_file()
                    entry.set()
                else:
                    try:
                        self._write(self._line(entry))
                    except Exception:  # a full disk must not kill the writer: count and go on
                        log.exception("request log: could not write a line to %s", self.path)
                        self._drop()
            self._flush_file()
        if self._file is not None:
            self._file.close()

    def _flush_file(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError:
                log.exception("request log: could not flush %s", self.path)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every line queued so far is written and flushed; False if that took over `timeout`."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("request log: queue still full after %.0f s; dropping what is queued", timeout)
            return
        self._thread.join(timeout)
