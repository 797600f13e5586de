"""Load generator: replay held-out taxi trips against the model server at a fixed open-loop rate.

    python -m tfpipe.serving.loadgen --url http://127.0.0.1:8501 --csv held_out.csv --rate 250 \
        --duration 60 --report report.json [--users 1000] [--stop-file PATH] [--batch 1]

Open loop: request i is sent at start + i/rate whether or not earlier answers came back, so a slow
server shows up as latency (measured from the scheduled send time) instead of a slower sender. Each
simulated user has a sticky key (X-Request-Key), so the server's split keeps a user on one version.

Trips come from a CSV with the taxi header: `tips` and `big_tipper` are dropped (never sent), empty cells
become null, and only the model's inputs are sent, typed as the server's signature metadata says. Runs
until --duration seconds pass, the --stop-file appears, or SIGTERM/SIGINT; then writes the JSON report:
sent, succeeded, failed (non-2xx or connection errors, with the first few messages), count per served
version, fallbacks, latency p50/p99 (ms), achieved rate. No TensorFlow here.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import itertools
import json
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

NEVER_SENT = ("tips", "big_tipper")
MAX_ERRORS_KEPT = 5


def read_trips(path: str | os.PathLike, inputs: dict[str, str], limit: int | None = None) -> list[dict[str, Any]]:
    """Trips as instances: the model's inputs only, typed, empty cells as null."""
    trips = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        absent = [name for name in inputs if name not in (reader.fieldnames or [])]
        if absent:
            raise SystemExit(f"{path}: the model takes {absent}, which the CSV does not have")
        for row in itertools.islice(reader, limit):
            trip: dict[str, Any] = {}
            for name, dtype in inputs.items():
                trip[name] = _typed(row[name], dtype)
            trips.append(trip)
    if not trips:
        raise SystemExit(f"{path}: no trips")
    return trips


def _typed(text: str, dtype: str) -> Any:
    if text == "":
        return None
    if dtype == "string":
        return text
    if dtype.startswith(("int", "uint")):
        number = float(text)
        return int(number) if number.is_integer() else number
    if dtype == "bool":
        return text.lower() in ("1", "true")
    return float(text)


_TF_DTYPES = {
    "DT_INT64": "int64",
    "DT_INT32": "int32",
    "DT_INT16": "int16",
    "DT_INT8": "int8",
    "DT_UINT8": "uint8",
    "DT_FLOAT": "float32",
    "DT_DOUBLE": "float64",
    "DT_HALF": "float16",
    "DT_STRING": "string",
    "DT_BOOL": "bool",
}


async def signature_inputs(session: aiohttp.ClientSession, url: str, model: str) -> dict[str, str]:
    """{input: dtype} of the served model, from GET /v1/models/<model>/metadata."""
    try:
        async with session.get(f"{url}/v1/models/{model}/metadata") as response:
            text = await response.text()
    except (aiohttp.ClientError, OSError) as exc:
        raise SystemExit(f"{url}: cannot read the model's metadata: {exc}") from None
    if response.status != 200:
        raise SystemExit(f"{url}: metadata answered {response.status}: {text[:300]}")
    defs = json.loads(text)["metadata"]["signature_def"]["signature_def"]
    inputs = defs["serving_default"]["inputs"]
    return {name: _TF_DTYPES.get(info["dtype"], "string") for name, info in inputs.items()}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


class LoadGenerator:
    def __init__(
        self,
        url: str,
        model: str,
        trips: list[dict[str, Any]],
        *,
        rate: float,
        duration: float,
        users: int = 1000,
        batch: int = 1,
        stop_file: str | None = None,
        sticky_header: str = "X-Request-Key",
        path: str | None = None,
        connections: int = 64,
        timeout: float = 10.0,
        seed: int = 0,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.trips = trips
        self.rate = rate
        self.duration = duration
        self.users = users
        self.batch = batch
        self.stop_file = Path(stop_file) if stop_file else None
        self.sticky_header = sticky_header
        self.path = path or f"/v1/models/{model}:predict"
        self.connections = connections
        self.timeout = timeout
        self.random = random.Random(seed)
        self.stopping = asyncio.Event()
        self.sent = 0
        self.succeeded = 0
        self.failed = 0
        self.codes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.roles: Counter[str] = Counter()
        self.fallbacks = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []

    def _error(self, message: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)

    async def _one(self, session: aiohttp.ClientSession, scheduled: float, body: bytes, key: str) -> None:
        try:
            async with session.post(
                self.url + self.path,
                data=body,
                headers={self.sticky_header: key, "Content-Type": "application/json"},
            ) as response:
                payload = await response.read()
                elapsed = time.perf_counter() - scheduled
                self.codes[str(response.status)] += 1
                if 200 <= response.status < 300:
                    self.succeeded += 1
                    self.latencies.append(elapsed)
                    self.versions[response.headers.get("X-Model-Version", "")] += 1
                    self.roles[response.headers.get("X-Model-Role", "")] += 1
                    if response.headers.get("X-Model-Fallback"):
                        self.fallbacks += 1
                else:
                    self._error(f"HTTP {response.status}: {payload[:300].decode('utf-8', 'replace')}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.codes["connection_error"] += 1
            self._error(f"{type(exc).__name__}: {exc}")

    def _stop_requested(self) -> bool:
        return self.stopping.is_set() or (self.stop_file is not None and self.stop_file.exists())

    async def run(self) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        tasks: set[asyncio.Task] = set()
        trip_index = 0
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            started = time.perf_counter()
            next_check = started
            interval = 1.0 / self.rate
            while True:
                now = time.perf_counter()
                if now - started >= self.duration:
                    break
                if now >= next_check:
                    if self._stop_requested():
                        break
                    next_check = now + 0.1
                scheduled = started + self.sent * interval
                if scheduled > now:
                    await asyncio.sleep(scheduled - now)
                    continue
                instances = []
                for _ in range(self.batch):
                    instances.append(self.trips[trip_index % len(self.trips)])
                    trip_index += 1
                body = orjson.dumps({"instances": instances})
                key = f"user-{self.random.randrange(self.users)}"
                task = asyncio.create_task(self._one(session, scheduled, body, key))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                await asyncio.sleep(0)  # let the requests go out even when behind schedule
            sending = time.perf_counter() - started
            if tasks:
                await asyncio.wait(tasks, timeout=self.timeout + 1)
        return self.report(sending)

    def report(self, seconds: float) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies]
        p50, p99 = percentile(ms, 50), percentile(ms, 99)
        return {
            "url": self.url + self.path,
            "rate": self.rate,
            "batch": self.batch,
            "seconds": round(seconds, 3),
            "sent": self.sent,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors": self.errors,
            "codes": dict(self.codes),
            "versions": dict(self.versions),
            "roles": dict(self.roles),
            "fallbacks": self.fallbacks,
            "latency_ms": {
                "p50": None if p50 is None else round(p50, 3),
                "p90": None if not ms else round(percentile(ms, 90), 3),
                "p99": None if p99 is None else round(p99, 3),
                "max": None if not ms else round(max(ms), 3),
            },
            "achieved_rate": round(self.sent / seconds, 1) if seconds > 0 else 0.0,
            "answered_rate": round(self.succeeded / seconds, 1) if seconds > 0 else 0.0,
        }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfpipe.serving.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8501", help="the server's base URL")
    parser.add_argument("--model", default="big_tipper", help="serving.model_name")
    parser.add_argument("--csv", required=True, help="held-out trips with the taxi header")
    parser.add_argument("--rate", type=float, default=250.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run (at most)")
    parser.add_argument("--stop-file", help="stop as soon as this file exists")
    parser.add_argument("--report", help="write the JSON report here (default: stdout only)")
    parser.add_argument("--users", type=int, default=1000, help="simulated users, one sticky key each")
    parser.add_argument("--batch", type=int, default=1, help="instances per request")
    parser.add_argument("--limit", type=int, help="read at most this many trips")
    parser.add_argument("--path", help="request path (default /v1/models/<model>:predict)")
    parser.add_argument("--sticky-header", default="X-Request-Key")
    parser.add_argument("--connections", type=int, default=64, help="connection pool size")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    parser.add_argument("--seed", type=int, default=0)
    return parser


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        inputs = await signature_inputs(session, args.url.rstrip("/"), args.model)
    trips = read_trips(args.csv, inputs, args.limit)
    gc.freeze()  # the trips live to the end: no collection pauses over them while sending
    generator = LoadGenerator(
        args.url,
        args.model,
        trips,
        rate=args.rate,
        duration=args.duration,
        users=args.users,
        batch=args.batch,
        stop_file=args.stop_file,
        sticky_header=args.sticky_header,
        path=args.path,
        connections=args.connections,
        timeout=args.timeout,
        seed=args.seed,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, generator.stopping.set)
    return await generator.run()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.batch < 1 or args.users < 1:
        raise SystemExit("--rate, --duration, --batch and --users must be positive")
    report = asyncio.run(_main(args))
    text = json.dumps(report, sort_keys=True)
    if args.report:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text + "\n")
        os.replace(partial, path)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
