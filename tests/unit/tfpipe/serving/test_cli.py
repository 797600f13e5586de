"""The command lines: `python -m tfpipe serve` (registry champion, Vertex AI's variables, SIGTERM),
`python -m tfpipe sabotage-model` and the load generator, each in its own process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf

from tests.conftest import CONFIG_PATH, ML_PYTHON
from tests.unit.tfpipe.serving.conftest import MODEL, instances
from tfpipe.config import load_pipeline_config
from tfpipe.errors import StageError
from tfpipe.stages import RESULT_PREFIX

REGISTERED = "chicago_taxi_big_tipper"  # evaluation.model_name in the config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, models):
    """An MLflow registry (SQLite): version 2 the champion, 1 the challenger; the environment pointing at it."""
    from tfpipe.registry.mlflow_registry import ModelRegistry

    root = tmp_path_factory.mktemp("registry")
    env = {
        "MLFLOW_TRACKING_URI": str(root / "mlflow.db"),
        "TFPIPE_MLFLOW_ARTIFACT_ROOT": str(root / "artifacts"),
        "TFPIPE_REQUEST_LOG_DIR": str(root / "requests"),
    }
    client = ModelRegistry(env["MLFLOW_TRACKING_URI"]).client
    client.create_registered_model(REGISTERED)
    client.create_model_version(REGISTERED, source=models.v1)
    client.create_model_version(REGISTERED, source=models.v2)
    client.set_registered_model_alias(REGISTERED, "champion", "2")
    client.set_registered_model_alias(REGISTERED, "challenger", "1")
    return env


def test_the_registry_champion_is_what_serves_and_none_is_a_clear_error(registry_env, models, monkeypatch):
    from tfpipe.stages.serve import from_registry

    for key, value in registry_env.items():
        monkeypatch.setenv(key, value)
    config = load_pipeline_config(CONFIG_PATH)
    assert from_registry(config, "champion") == ("2", models.v2)
    assert from_registry(config, "challenger") == ("1", models.v1)
    with pytest.raises(StageError, match="alias 'nobody'"):
        from_registry(config, "nobody")
    unregistered = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"model_name": "other"})}
    )
    with pytest.raises(StageError, match=r"no champion in the registry .*run `make demo` first, or pass --model-uri"):
        from_registry(unregistered, "champion")


def _read_lines(stream, lines: list[str], ready: threading.Event) -> None:
    for line in stream:
        lines.append(line)
        if "ready at" in line:
            ready.set()


def test_serve_runs_the_champion_on_vertex_ai_routes_until_sigterm(registry_env, models, trips, ml_python):
    port = _free_port()
    env = {
        **os.environ,
        **registry_env,
        "TFPIPE_SERVING_ADMIN_TOKEN": "cli-token",
        "AIP_HTTP_PORT": str(port),
        "AIP_PREDICT_ROUTE": "/vertex/predict",
        "AIP_HEALTH_ROUTE": "/vertex/health",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [ml_python, "-m", "tfpipe", "serve", "--config", str(CONFIG_PATH), "--from-registry", "champion"]
    process = subprocess.Popen(
        [*argv, "--host", "127.0.0.1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    ready = threading.Event()
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines, ready), daemon=True)
    reader.start()
    try:
        assert ready.wait(120), f"no ready line; stderr: {process.stderr.read() if process.poll() is not None else ''}"
        url = f"http://127.0.0.1:{port}"
        assert f"ready at {url}/v1/models/{MODEL}:predict (stable version 2)" in "".join(lines)
        assert requests.get(url + "/vertex/health", timeout=10).status_code == 200
        rows = instances(trips.head(3))
        vertex = requests.post(url + "/vertex/predict", json={"instances": rows, "parameters": {}}, timeout=10)
        assert vertex.status_code == 200 and vertex.headers["X-Model-Version"] == "2"
        tf_serving = requests.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": rows}, timeout=10)
        assert tf_serving.json() == vertex.json() and len(tf_serving.json()["predictions"]) == 3
        deployment = requests.get(url + "/admin/deployment", headers={"Authorization": "Bearer cli-token"}, timeout=10)
        assert deployment.json()["stable"] == {"version": "2", "model_uri": models.v2}
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(10)
    result = json.loads(next(line for line in lines if line.startswith(RESULT_PREFIX))[len(RESULT_PREFIX) :])
    assert result["version"] == "2" and result["requests"] == 2
    logged = (Path(registry_env["TFPIPE_REQUEST_LOG_DIR"]) / "requests.jsonl").read_text().splitlines()
    assert len(logged) == 2 and json.loads(logged[0])["version"] == "2"


def test_serve_with_a_model_that_is_not_there_fails_with_the_reason(ml_python, tmp_path, registry_env):
    env = {**os.environ, **registry_env}
    done = subprocess.run(
        [
            ml_python,
            "-m",
            "tfpipe",
            "serve",
            "--config",
            str(CONFIG_PATH),
            "--model-uri",
            str(tmp_path / "none"),
            "--port",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "cannot serve version 1 from" in done.stdout and "does not exist" in done.stdout


def test_sabotage_model_writes_broken_models_with_the_same_signature(models, ml_python, tmp_path):
    output = tmp_path / "constant"
    done = subprocess.run(
        [
            ml_python,
            "-m",
            "tfpipe",
            "sabotage-model",
            "--model-uri",
            models.v1,
            "--mode",
            "constant",
            "--output-uri",
            str(output),
            "--value",
            "0.25",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(next(x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX))[len(RESULT_PREFIX) :])
    assert result["mode"] == "constant" and result["outputs"] == {"probabilities": "float32"}
    source = tf.saved_model.load(models.v1).signatures["serving_default"]
    inputs = source.structured_input_signature[1]
    assert result["inputs"] == {name: spec.dtype.name for name, spec in inputs.items()}
    batch = {
        name: tf.constant(np.zeros(4, spec.dtype.as_numpy_dtype) if spec.dtype != tf.string else ["a"] * 4)
        for name, spec in inputs.items()
    }
    for path, check in [(str(output), "constant"), (models.error, "error")]:
        function = tf.saved_model.load(path).signatures["serving_default"]
        assert function.structured_input_signature == source.structured_input_signature
        if check == "constant":
            assert function(**batch)["probabilities"].numpy().tolist() == [0.25] * 4
        else:
            with pytest.raises(tf.errors.InvalidArgumentError, match="sabotaged model"):
                function(**batch)
    refused = subprocess.run(
        [
            ml_python,
            "-m",
            "tfpipe",
            "sabotage-model",
            "--model-uri",
            str(tmp_path),
            "--mode",
            "constant",
            "--output-uri",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "is not a SavedModel" in refused.stdout


def _loadgen(url: str, csv: Path, report: Path, *extra: str, timeout: float = 60) -> dict:
    done = subprocess.run(
        [
            str(ML_PYTHON),
            "-m",
            "tfpipe.serving.loadgen",
            "--url",
            url,
            "--csv",
            str(csv),
            "--report",
            str(report),
            *list(extra),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(report.read_text())


def test_the_load_generator_replays_trips_at_a_fixed_rate_with_sticky_users(served, models, tmp_path):
    served.traffic("1", "2", 50)
    report = _loadgen(served.url, models.held_out, tmp_path / "r.json", "--rate", "100", "--duration", "2")
    assert report["failed"] == 0 and report["errors"] == []
    assert 150 <= report["sent"] <= 201 and report["succeeded"] == report["sent"]
    assert set(report["versions"]) == {"1", "2"} and sum(report["versions"].values()) == report["sent"]
    assert 60 < report["achieved_rate"] < 140
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    # Requests the server refuses are failures, with the first few messages kept.
    refused = _loadgen(
        served.url,
        models.held_out,
        tmp_path / "refused.json",
        *("--rate", "20", "--duration", "1", "--path", f"/v1/models/{MODEL}/versions/404:predict"),
    )
    assert refused["failed"] == refused["sent"] > 0 and refused["succeeded"] == 0
    assert 0 < len(refused["errors"]) <= 5 and refused["errors"][0].startswith("HTTP 404")


def test_the_load_generator_stops_when_the_stop_file_appears(served, models, tmp_path):
    stop = tmp_path / "stop"
    threading.Timer(2.0, stop.touch).start()
    started = time.perf_counter()
    report = _loadgen(
        served.url, models.held_out, tmp_path / "r.json", "--rate", "50", "--duration", "60", "--stop-file", str(stop)
    )
    assert time.perf_counter() - started < 30
    assert 0 < report["sent"] < 50 * 20 and report["failed"] == 0


def test_the_load_generator_stops_on_sigterm_and_still_reports(served, models, tmp_path):
    report = tmp_path / "r.json"
    before = served.metric("tfpipe_serving_requests_total", code="200")
    process = subprocess.Popen(
        [
            str(ML_PYTHON),
            "-m",
            "tfpipe.serving.loadgen",
            "--url",
            served.url,
            "--csv",
            str(models.held_out),
            "--report",
            str(report),
            "--rate",
            "50",
            "--duration",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while served.metric("tfpipe_serving_requests_total", code="200") <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    written = json.loads(report.read_text())
    assert written["sent"] > 0 and written["failed"] == 0 and written["seconds"] < 30
