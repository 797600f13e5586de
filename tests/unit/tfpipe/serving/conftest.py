"""Real models and a real server for the serving tests.

Two tiny big_tipper models trained in process on real trips (the training module's own code, a few
seconds each) stand for two versions; a third takes different inputs; sabotaged copies fail or answer a
constant. Servers listen on a free port on 127.0.0.1 and are called over real HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
import requests
import tensorflow as tf

from tests.conftest import write_sample_rows
from tfpipe.serving import sabotage
from tfpipe.serving.server import ModelServer, ServerThread
from tfpipe.training import model as m

MODEL = "big_tipper"
TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}", "X-Actor": "pytest"}
SMALL = m.Design(hidden=(8,), dropout=0.0)
NARROW = m.Design(features={"fare": m.Feature("log"), "trip_miles": m.Feature("log")}, crosses=(), hidden=(4,))


@dataclass
class Models:
    v1: str
    v2: str
    narrow: str  # other inputs
    constant: str  # sabotaged: 0.5 for every trip
    error: str  # sabotaged: fails every call
    held_out: Path  # real trips not trained on, with the CSV's header (tips and big_tipper included)


def _train(csv: Path, output: Path, design: m.Design, seed: int, epochs: int, transform: dict | None = None) -> str:
    m.keras.utils.set_random_seed(seed)
    columns = m.feature_columns(design)
    transform = transform or m.analyze(m.make_dataset(csv, 128, columns=columns), design)
    model = m.build_model(transform, design)
    model.fit(m.make_dataset(csv, 64, shuffle=True, seed=seed, columns=columns), epochs=epochs, verbose=0)
    return m.export_serving_model(model, output)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp("serving-models")
    train = write_sample_rows(root / "train.csv", 400)
    held_out = write_sample_rows(root / "held_out.csv", 300, start=2000)
    transform = m.analyze(m.make_dataset(train, 128, columns=m.feature_columns(SMALL)), SMALL)
    v1 = _train(train, root / "v1", SMALL, seed=0, epochs=1, transform=transform)
    v2 = _train(train, root / "v2", SMALL, seed=1, epochs=2, transform=transform)
    narrow = _train(train, root / "narrow", NARROW, seed=0, epochs=1)
    sabotage.sabotage(v1, str(root / "constant"), "constant", 0.5)
    sabotage.sabotage(v1, str(root / "error"), "error")
    return Models(v1, v2, narrow, str(root / "constant"), str(root / "error"), held_out)


@pytest.fixture(scope="session")
def trips(models) -> pd.DataFrame:
    """The held-out trips as the CSV has them."""
    return pd.read_csv(models.held_out)


def instances(frame: pd.DataFrame, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows as a client sends them: the model's columns, empty cells as null, ints as ints."""
    columns = columns or m.feature_columns(SMALL)
    out = []
    for record in frame[columns].to_dict("records"):
        row = {}
        for name, value in record.items():
            if value is None or (isinstance(value, float) and np.isnan(value)):
                row[name] = None
            elif m.RAW_COLUMNS[name] == tf.int64:
                row[name] = int(value)
            elif m.RAW_COLUMNS[name] == tf.float32:
                row[name] = float(value)
            else:
                row[name] = str(value)
        out.append(row)
    return out


def in_process(model_uri: str, frame: pd.DataFrame) -> np.ndarray:
    """The SavedModel's serving_default called in this process, on the same trips."""
    signature = tf.saved_model.load(model_uri).signatures["serving_default"]
    features = m.features_from_frame(frame, m.feature_columns(SMALL))
    return signature(**{k: tf.constant(v) for k, v in features.items()})["probabilities"].numpy()


class Harness:
    """A running server, its URL, and helpers for the admin API."""

    def __init__(self, thread: ServerThread) -> None:
        self.thread = thread
        self.server: ModelServer = thread.server
        self.url = thread.url
        self.http = requests.Session()

    def predict(self, body: Any, path: str = f"/v1/models/{MODEL}:predict", **kwargs: Any) -> requests.Response:
        return self.http.post(self.url + path, json=body, **kwargs)

    def admin(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> requests.Response:
        return self.http.request(method, self.url + path, json=body, headers=ADMIN if headers is None else headers)

    def load(self, version: str, uri: str) -> requests.Response:
        response = self.admin("POST", "/admin/versions", {"version": version, "model_uri": uri})
        assert response.status_code == 200, response.text
        return response

    def traffic(self, stable: str, canary: str | None = None, percent: float = 0) -> requests.Response:
        response = self.admin("PUT", "/admin/traffic", {"stable": stable, "canary": canary, "canary_percent": percent})
        assert response.status_code == 200, response.text
        return response

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels` (0 if none)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        text = self.http.get(self.url + "/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def start_server(tmp_path: Path | None = None, *, request_log: Any = None, **options: Any) -> Harness:
    options.setdefault("admin_token", TOKEN)
    server = ModelServer(MODEL, request_log=request_log, **options)
    thread = ServerThread(server)
    thread.start()
    return Harness(thread)


@pytest.fixture(scope="session")
def shared(models) -> Iterator[Harness]:
    """One server for the tests that leave it as they found it: v1 stable, v2 loaded, no canary."""
    harness = start_server()
    harness.load("1", models.v1)
    harness.load("2", models.v2)
    harness.traffic("1")
    yield harness
    harness.thread.stop()


@pytest.fixture
def served(shared, models) -> Iterator[Harness]:
    """The shared server, put back to v1 stable, v2 loaded, no canary, after the test."""
    yield shared
    shared.traffic("1")
    for entry in shared.admin("GET", "/admin/deployment").json()["loaded"]:
        if entry["version"] not in ("1", "2"):
            assert shared.admin("DELETE", f"/admin/versions/{entry['version']}").status_code == 200
    missing = {"1": models.v1, "2": models.v2}
    for version, uri in missing.items():
        shared.load(version, uri)


@pytest.fixture
def fresh(tmp_path) -> Iterator[Harness]:
    """A server of its own, with nothing loaded."""
    harness = start_server(tmp_path)
    yield harness
    harness.thread.stop()
