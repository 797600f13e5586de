"""The request/prediction log: one JSON line per sampled request, written off the request path, rotated."""

from __future__ import annotations

import json
import math
import time

import numpy as np

from tests.unit.tfpipe.serving.conftest import instances, start_server
from tfpipe.serving.metrics import ServingMetrics
from tfpipe.serving.request_log import RequestLog, hash_key


def _lines(directory) -> list[dict]:
    lines = []
    for path in sorted(directory.glob("requests.jsonl*")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def test_served_requests_are_logged_with_features_predictions_and_a_hashed_key(models, trips, tmp_path):
    log = RequestLog(tmp_path / "log", sample_rate=1.0, max_bytes=10_000_000, backups=2)
    harness = start_server(request_log=log)
    try:
        harness.load("1", models.v1)
        harness.traffic("1")
        rows = instances(trips.head(3))
        rows[0] = {name: None for name in rows[0]}
        answer = harness.predict({"instances": rows}, headers={"X-Request-Key": "rider-secret-42"}).json()
        harness.predict({"instances": [{"fare": "x"}]})  # refused: no features to log
        assert log.flush()
        dtypes = harness.server.routing.stable.inputs
    finally:
        harness.thread.stop()
    (line,) = _lines(tmp_path / "log")
    assert set(line) == {"ts", "model", "version", "role", "key", "instances", "predictions", "latency_ms", "status"}
    assert (line["model"], line["version"], line["role"], line["status"]) == ("big_tipper", "1", "stable", 200)
    assert line["ts"].endswith("+00:00")
    assert line["key"] == hash_key("rider-secret-42") and "rider-secret-42" not in json.dumps(line)
    assert line["predictions"] == answer["predictions"]
    assert line["latency_ms"] > 0
    # The features as the model got them: the missing defaults applied (a float's NaN is written as null).
    missing = line["instances"][0]
    assert missing["fare"] is None and missing["trip_seconds"] == -1 and missing["company"] == ""
    defaults = {"float32": None, "int64": -1, "string": ""}
    for sent, logged in zip(rows[1:], line["instances"][1:], strict=True):
        assert set(logged) == set(sent)
        for name, value in sent.items():
            if value is None:
                assert logged[name] == defaults[dtypes[name]], name
            elif isinstance(value, float):
                assert math.isclose(logged[name], value, rel_tol=1e-6), name
            else:
                assert logged[name] == value, name
    assert (tmp_path / "log" / "requests.jsonl").exists()


def test_sampling_logs_about_the_configured_share(tmp_path):
    log = RequestLog(tmp_path, sample_rate=0.2, max_bytes=1_000_000, backups=1)
    log._random.seed(7)
    share = sum(log.sampled() for _ in range(5000)) / 5000
    assert 0.17 < share < 0.23
    assert not any(RequestLog(tmp_path, sample_rate=0.0, max_bytes=1024, backups=1).sampled() for _ in range(100))


def test_sampled_requests_through_the_server(models, trips, tmp_path):
    log = RequestLog(tmp_path / "log", sample_rate=0.25, max_bytes=10_000_000, backups=2)
    log._random.seed(3)
    harness = start_server(request_log=log)
    try:
        harness.load("1", models.v1)
        harness.traffic("1")
        body = {"instances": instances(trips.head(1))}
        for _ in range(200):
            assert harness.predict(body).status_code == 200
        assert log.flush()
    finally:
        harness.thread.stop()
    assert 25 <= len(_lines(tmp_path / "log")) <= 75  # 50 expected


def _record(log: RequestLog, rows: int = 5) -> None:
    columns = {"fare": np.full(rows, 10.0, np.float32), "company": np.asarray(["Flash Cab"] * rows, dtype=object)}
    log.record(
        model="m",
        version="1",
        role="stable",
        key="k",
        columns=columns,
        predictions=[0.5] * rows,
        latency_ms=1.0,
        status=200,
    )


def test_files_rotate_by_size_and_keep_the_configured_backups(tmp_path):
    log = RequestLog(tmp_path, sample_rate=1.0, max_bytes=2048, backups=2)
    for _ in range(60):
        _record(log)
    assert log.flush()
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["requests.jsonl", "requests.jsonl.1", "requests.jsonl.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 2048
        for text in (tmp_path / name).read_text().splitlines():
            assert json.loads(text)["instances"][0] == {"fare": 10.0, "company": "Flash Cab"}
    assert log.written == 60


def test_a_slow_disk_drops_lines_and_counts_them_but_never_blocks(tmp_path, monkeypatch):
    metrics = ServingMetrics("m")
    log = RequestLog(tmp_path, sample_rate=1.0, max_bytes=1_000_000, backups=1, metrics=metrics, queue_size=5)
    slow_line = RequestLog._line

    def slow(entry):
        time.sleep(0.05)
        return slow_line(entry)

    monkeypatch.setattr(RequestLog, "_line", staticmethod(slow))
    started = time.perf_counter()
    for _ in range(100):
        _record(log)
    assert time.perf_counter() - started < 1.0  # 100 records against a writer needing 5 s
    assert log.dropped >= 80
    assert metrics.registry.get_sample_value("tfpipe_serving_request_log_dropped_total") == log.dropped
    assert log.flush()
    assert log.written + log.dropped == 100


def test_a_request_stable_answered_for_a_failing_canary_is_one_line(models, trips, tmp_path):
    log = RequestLog(tmp_path / "log", sample_rate=1.0, max_bytes=10_000_000, backups=2)
    harness = start_server(request_log=log)
    try:
        harness.load("1", models.v1)
        harness.load("3", models.error)
        harness.traffic("1", "3", 100)
        answer = harness.predict({"instances": instances(trips.head(2))})
        assert answer.headers["X-Model-Fallback"] == "canary-error"
        assert log.flush()
    finally:
        harness.thread.stop()
    (line,) = _lines(tmp_path / "log")
    assert (line["version"], line["role"], line["status"], line["fallback_from"]) == ("1", "stable", 200, "3")
    assert line["predictions"] == answer.json()["predictions"]
