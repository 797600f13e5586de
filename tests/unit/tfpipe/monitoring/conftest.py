"""A real model, real trips and a real model server for the monitoring tests.

A small big_tipper model is trained in process on 3,000 real trips (the training module's own code); the
next 1,000 trips are its evaluation split; 3,000 later trips are held out and replayed against the server
as they are, with the fare shifted, or with most `trip_miles` missing. The server is `python -m tfpipe serve`
in its own process, logging requests to a folder of the test's own.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from tests.conftest import CONFIG_PATH, write_sample_rows
from tfpipe.config import PipelineConfig, load_pipeline_config

TOKEN = "monitoring-test-token"
MODEL = "big_tipper"


@dataclass
class Trips:
    train: Path
    eval: Path
    clean: Path
    fare_shifted: Path
    missing_miles: Path


def _rewrite(source: Path, target: Path, change) -> Path:
    with open(source, newline="") as f, open(target, "w", newline="") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames, lineterminator="\n")
        writer.writeheader()
        for index, row in enumerate(reader):
            writer.writerow(change(index, row))
    return target


@pytest.fixture(scope="session")
def trips(tmp_path_factory) -> Trips:
    root = tmp_path_factory.mktemp("monitoring-trips")
    train = write_sample_rows(root / "train.csv", 3000)
    evaluation = write_sample_rows(root / "eval.csv", 1000, start=3000)
    clean = write_sample_rows(root / "clean.csv", 3000, start=5000)

    def shift_fare(index, row):
        if row["fare"]:
            row["fare"] = f"{float(row['fare']) * 3 + 15:.2f}"
        return row

    def drop_miles(index, row):
        if index % 10 < 6:
            row["trip_miles"] = ""
        return row

    return Trips(
        train,
        evaluation,
        clean,
        _rewrite(clean, root / "fare_shifted.csv", shift_fare),
        _rewrite(clean, root / "missing_miles.csv", drop_miles),
    )


@pytest.fixture(scope="session")
def model_uri(trips, tmp_path_factory) -> str:
    from tfpipe.training import model as m

    design = m.Design(hidden=(8,), dropout=0.0)
    m.keras.utils.set_random_seed(0)
    columns = m.feature_columns(design)
    transform = m.analyze(m.make_dataset(trips.train, 256, columns=columns), design)
    model = m.build_model(transform, design)
    model.fit(m.make_dataset(trips.train, 64, shuffle=True, seed=0, columns=columns), epochs=2, verbose=0)
    return m.export_serving_model(model, tmp_path_factory.mktemp("monitoring-model") / "model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m tfpipe serve` in its own process."""

    def __init__(self, ml_python: str, model_uri: str, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        env = {**os.environ, "TFPIPE_REQUEST_LOG_DIR": str(log_dir), "TFPIPE_SERVING_ADMIN_TOKEN": TOKEN}
        self.process = subprocess.Popen(
            [
                ml_python,
                "-m",
                "tfpipe",
                "serve",
                "--config",
                str(CONFIG_PATH),
                "--model-uri",
                model_uri,
                "--version",
                "1",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.output: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.output.append(line)
                if "ready at" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120):
            self.stop()
            raise RuntimeError("the model server did not start:\n" + "".join(self.output[-40:]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="session")
def server(ml_python, model_uri, tmp_path_factory) -> Iterator[Server]:
    running = Server(ml_python, model_uri, tmp_path_factory.mktemp("monitoring-requests"))
    yield running
    running.stop()


def replay(url: str, csv_path: Path, *, seconds: float, rate: float = 100.0) -> dict:
    """Replay trips at `rate` for `seconds` with the real load generator (in this process)."""
    import asyncio

    import aiohttp

    from tfpipe.serving import loadgen

    async def main() -> dict:
        async with aiohttp.ClientSession() as session:
            inputs = await loadgen.signature_inputs(session, url, MODEL)
        generator = loadgen.LoadGenerator(url, MODEL, loadgen.read_trips(csv_path, inputs), rate=rate, duration=seconds)
        return await generator.run()

    return asyncio.run(main())


def monitoring_config(tmp: Path, log_dir: Path, **monitoring) -> PipelineConfig:
    """The pipeline's config, with its state, artifacts and request log in `tmp`; no registry, no quota."""
    config = load_pipeline_config(CONFIG_PATH)
    values = config.monitoring.model_dump()
    values.update(state_uri=str(tmp / "state"), request_log_dir=str(log_dir), **monitoring)
    return config.model_copy(
        update={
            "monitoring": type(config.monitoring).model_validate(values),
            "artifacts": config.artifacts.model_copy(update={"root": str(tmp / "artifacts")}),
            "registry": None,
            "quota": None,
        }
    )


def wait_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


__all__ = ["Server", "Trips", "free_port", "monitoring_config", "replay", "sys", "wait_until"]
