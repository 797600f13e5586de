"""The model server over real HTTP with real SavedModels: TF Serving's API, the split, batching, failures."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
import zlib

import aiohttp
import numpy as np
import pytest
import requests

from tests.unit.tfpipe.serving.conftest import MODEL, in_process, instances, start_server
from tfpipe.serving.routing import bucket_of

PREDICT = f"/v1/models/{MODEL}:predict"


def test_served_predictions_equal_the_in_process_signature_call(served, models, trips):
    expected = in_process(models.v1, trips)
    rows = instances(trips)
    # One request with every trip, in the row format.
    response = served.predict({"instances": rows})
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == "1" and response.headers["X-Model-Role"] == "stable"
    predictions = np.asarray(response.json()["predictions"])
    assert predictions.shape == (len(trips),)
    np.testing.assert_allclose(predictions, expected, rtol=0, atol=1e-6)
    # The columnar format: TF Serving answers it under "outputs".
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    outputs = served.predict({"inputs": columns}).json()["outputs"]
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-6)
    # One trip per request.
    for index in (0, 7, 123):
        single = served.predict({"instances": [rows[index]]}).json()["predictions"]
        assert abs(single[0] - expected[index]) < 1e-6
    # The predictions are real: different trips get different probabilities.
    assert np.std(predictions) > 1e-3


def test_a_tf_serving_style_client_request_works(served):
    # What a TF Serving REST client sends: JSON with signature_name, a content type, and no sticky key.
    body = json.dumps(
        {
            "signature_name": "serving_default",
            "instances": [
                {
                    "fare": 12.45,
                    "trip_miles": 0.0,
                    "trip_seconds": 0,
                    "payment_type": "Credit Card",
                    "company": "Chicago Elite Cab Corp. (Chicago Carriag",
                    "trip_start_hour": 19,
                    "trip_start_day": 6,
                    "trip_start_month": 5,
                    "pickup_community_area": None,
                    "dropoff_community_area": None,
                    "pickup_latitude": None,
                    "pickup_longitude": None,
                    "dropoff_latitude": None,
                    "dropoff_longitude": None,
                }
            ],
        }
    )
    response = requests.post(served.url + PREDICT, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200
    (probability,) = response.json()["predictions"]
    assert 0.0 < probability < 1.0
    gzipped = served.http.post(
        served.url + PREDICT, data=gzip.compress(body.encode()), headers={"Content-Encoding": "gzip"}
    )
    assert gzipped.json()["predictions"] == [probability]
    deflated = served.http.post(
        served.url + PREDICT, data=zlib.compress(body.encode()), headers={"Content-Encoding": "deflate"}
    )
    assert deflated.json()["predictions"] == [probability]


def test_versions_and_labels_bypass_the_split(served, models, trips):
    rows = instances(trips.head(20))
    served.traffic("1", "2", 100)
    by_split = served.predict({"instances": rows})
    assert by_split.headers["X-Model-Version"] == "2" and by_split.headers["X-Model-Role"] == "canary"
    stable = served.predict({"instances": rows}, path=f"/v1/models/{MODEL}/labels/stable:predict")
    assert stable.headers["X-Model-Version"] == "1" and stable.headers["X-Model-Role"] == "stable"
    np.testing.assert_allclose(stable.json()["predictions"], in_process(models.v1, trips.head(20)), atol=1e-6)
    version_2 = served.predict({"instances": rows}, path=f"/v1/models/{MODEL}/versions/2:predict")
    np.testing.assert_allclose(version_2.json()["predictions"], in_process(models.v2, trips.head(20)), atol=1e-6)
    assert version_2.json() != stable.json()
    served.traffic("1")
    direct = served.predict({"instances": rows}, path=f"/v1/models/{MODEL}/versions/2:predict")
    assert direct.status_code == 200 and direct.headers["X-Model-Role"] == "none"
    for path, message in [
        (f"/v1/models/{MODEL}/labels/canary:predict", "label 'canary' of 'big_tipper' is not assigned"),
        (f"/v1/models/{MODEL}/labels/beta:predict", "unknown label 'beta'"),
        (f"/v1/models/{MODEL}/versions/9:predict", "version 9 of 'big_tipper' is not available; available: 1, 2"),
        ("/v1/models/other_model:predict", "model 'other_model' is not served here; this server serves 'big_tipper'"),
        ("/v1/models/big_tipper/versions/1/labels/x:predict", "no such endpoint"),
    ]:
        response = served.predict({"instances": rows}, path=path)
        assert response.status_code == 404, path
        assert message in response.json()["error"], response.text


def test_model_status_and_metadata_follow_tf_serving(served):
    status = served.http.get(f"{served.url}/v1/models/{MODEL}").json()
    assert status == {
        "model_version_status": [
            {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in ("1", "2")
        ]
    }
    one = served.http.get(f"{served.url}/v1/models/{MODEL}/versions/2").json()
    assert one["model_version_status"][0]["version"] == "2"
    assert served.http.get(f"{served.url}/v1/models/{MODEL}/versions/5").status_code == 404
    assert served.http.get(f"{served.url}/v1/models/nope").status_code == 404
    metadata = served.http.get(f"{served.url}/v1/models/{MODEL}/metadata").json()
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["fare"]["dtype"] == "DT_FLOAT"
    assert signature["inputs"]["trip_seconds"]["dtype"] == "DT_INT64"
    assert signature["inputs"]["company"]["dtype"] == "DT_STRING"
    assert signature["inputs"]["fare"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert "tips" not in signature["inputs"] and len(signature["inputs"]) == 14
    assert set(signature["outputs"]) == {"probabilities"}
    v2 = served.http.get(f"{served.url}/v1/models/{MODEL}/versions/2/metadata").json()
    assert v2["model_spec"]["version"] == "2"


def test_readiness_waits_for_a_warm_stable_version(fresh, models):
    assert fresh.http.get(fresh.url + "/healthz").status_code == 200
    not_ready = fresh.http.get(fresh.url + "/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["reason"] == "no stable version is serving"
    no_model = fresh.predict({"instances": [{}]})
    assert no_model.status_code == 503 and "no version of 'big_tipper' is serving yet" in no_model.json()["error"]
    assert fresh.http.get(f"{fresh.url}/v1/models/{MODEL}").status_code == 404
    fresh.load("1", models.v1)
    assert fresh.http.get(fresh.url + "/readyz").status_code == 503  # loaded, but routes nothing yet
    fresh.traffic("1")
    ready = fresh.http.get(fresh.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["stable"] == "1"
    assert fresh.metric("tfpipe_serving_model_loaded", version="1") == 1


def test_the_split_is_sticky_proportional_and_monotone(served, trips):
    body = {"instances": instances(trips.head(1))}
    keys = [f"rider-{i}" for i in range(300)]

    def versions(percent: float) -> dict[str, str]:
        served.traffic("1", "2", percent)
        return {key: served.predict(body, headers={"X-Request-Key": key}).headers["X-Model-Version"] for key in keys}

    at_20 = versions(20)
    assert at_20 == {key: "2" if bucket_of(key) < 2000 else "1" for key in keys}
    again = {key: served.predict(body, headers={"X-Request-Key": key}).headers["X-Model-Version"] for key in keys[:50]}
    assert again == {key: at_20[key] for key in keys[:50]}
    assert 30 <= list(at_20.values()).count("2") <= 90  # 300 keys at 20%: 60 expected
    at_50 = versions(50)
    assert all(at_50[key] == "2" for key in keys if at_20[key] == "2")
    assert list(at_50.values()).count("2") > list(at_20.values()).count("2")
    # Without a key, each request is drawn at random.
    served.traffic("1", "2", 50)
    drawn = {served.predict(body).headers["X-Model-Version"] for _ in range(60)}
    assert drawn == {"1", "2"}
    assert served.metric("tfpipe_serving_traffic_percent", role="canary") == 50
    assert served.metric("tfpipe_serving_traffic_percent", role="stable") == 50


async def _fire(
    url: str, bodies: list[dict], concurrency: int, headers: dict | None = None
) -> list[tuple[int, dict, dict]]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: dict) -> tuple[int, dict, dict]:
            async with session.post(url, json=body, headers=headers) as response:
                return response.status, dict(response.headers), await response.json()

        return await asyncio.gather(*(one(body) for body in bodies))


def test_concurrent_requests_are_batched_and_each_gets_its_own_prediction(models, trips):
    harness = start_server(max_batch_size=32, batch_timeout_ms=5.0)
    try:
        harness.load("1", models.v1)
        harness.traffic("1")
        calls_before = harness.metric("tfpipe_serving_batch_size_count")
        rows_before = harness.metric("tfpipe_serving_batch_size_sum")
        rows = instances(trips.head(200))
        results = asyncio.run(_fire(harness.url + PREDICT, [{"instances": [row]} for row in rows], 64))
        assert all(status == 200 for status, _, _ in results)
        served_predictions = np.asarray([body["predictions"][0] for _, _, body in results])
        np.testing.assert_allclose(served_predictions, in_process(models.v1, trips.head(200)), atol=1e-6)
        calls = harness.metric("tfpipe_serving_batch_size_count") - calls_before
        batched_rows = harness.metric("tfpipe_serving_batch_size_sum") - rows_before
        assert batched_rows == 200
        assert calls < 200 / 2, f"{calls} model calls for 200 concurrent rows: not batching"
        # Some call took more than one row: the histogram's first bucket (le=1) holds fewer than all calls.
        assert harness.metric("tfpipe_serving_batch_size_bucket", le="1.0") < harness.metric(
            "tfpipe_serving_batch_size_count"
        )
    finally:
        harness.thread.stop()


def test_a_failing_canary_is_counted_while_stable_answers(served, models, trips):
    served.load("3", models.error)
    served.traffic("1", "3", 100)
    rows = instances(trips.head(5))
    errors = served.metric("tfpipe_serving_model_errors_total", version="3")
    failed = served.metric("tfpipe_serving_requests_total", version="3", role="canary", code="500")
    fallbacks = served.metric("tfpipe_serving_canary_fallbacks_total", version="3")
    expected = in_process(models.v1, trips.head(5))
    for i in range(10):
        response = served.predict({"instances": rows}, headers={"X-Request-Key": f"k{i}"})
        assert response.status_code == 200
        assert response.headers["X-Model-Version"] == "1" and response.headers["X-Model-Role"] == "stable"
        assert response.headers["X-Model-Fallback"] == "canary-error"
        np.testing.assert_allclose(response.json()["predictions"], expected, atol=1e-6)
    assert served.metric("tfpipe_serving_requests_total", version="3", role="canary", code="500") - failed == 10
    assert served.metric("tfpipe_serving_model_errors_total", version="3") - errors == 10
    assert served.metric("tfpipe_serving_canary_fallbacks_total", version="3") - fallbacks == 10
    # Asked for by label, the canary's failure is the answer: a 500 with the reason, not a fallback.
    direct = served.predict({"instances": rows}, path=f"/v1/models/{MODEL}/labels/canary:predict")
    assert direct.status_code == 500 and "sabotaged model" in direct.json()["error"]
    assert "X-Model-Fallback" not in direct.headers


def test_a_failing_stable_is_a_500_with_a_json_error(served, models, trips):
    served.load("3", models.error)
    served.traffic("3")
    response = served.predict({"instances": instances(trips.head(2))})
    assert response.status_code == 500
    assert response.headers["X-Model-Version"] == "3"
    assert "model version 3 failed" in response.json()["error"]
    assert served.metric("tfpipe_serving_requests_total", version="3", role="stable", code="500") >= 1


def test_the_constant_model_answers_one_half_for_every_trip(served, models, trips):
    served.load("4", models.constant)
    response = served.predict({"instances": instances(trips.head(30))}, path=f"/v1/models/{MODEL}/versions/4:predict")
    assert response.status_code == 200 and response.json()["predictions"] == [0.5] * 30


def _bad_cases(row: dict) -> list[tuple[str, dict, object, int, str]]:
    """(id, request kwargs, body, status, message part)."""
    big = {"instances": [row] * 1001}
    return [
        ("not json", {"data": b"{nope"}, None, 400, "not valid JSON"),
        ("not an object", {"json": [row]}, None, 400, "must be a JSON object"),
        ("neither", {"json": {"rows": [row]}}, None, 400, "unknown key(s) 'rows'"),
        ("both", {"json": {"instances": [row], "inputs": {}}}, None, 400, "both 'instances' and 'inputs'"),
        ("empty", {"json": {"instances": []}}, None, 400, "'instances' is empty"),
        ("instance not object", {"json": {"instances": [[1, 2]]}}, None, 400, "instances[0] must be an object"),
        (
            "missing",
            {"json": {"instances": [{k: v for k, v in row.items() if k != "fare"}]}},
            None,
            400,
            "no feature 'fare'",
        ),
        ("tips leak", {"json": {"instances": [{**row, "tips": 1.5}]}}, None, 400, "unknown feature 'tips'"),
        ("label leak", {"json": {"instances": [{**row, "big_tipper": 1}]}}, None, 400, "unknown feature 'big_tipper'"),
        (
            "string for number",
            {"json": {"instances": [{**row, "fare": "ten"}]}},
            None,
            400,
            "instances[0].fare: expected a number",
        ),
        (
            "fraction for int",
            {"json": {"instances": [{**row, "trip_seconds": 60.5}]}},
            None,
            400,
            "trip_seconds: expected an integer (int64), got 60.5 with a fraction",
        ),
        (
            "bool",
            {"json": {"instances": [{**row, "trip_start_hour": True}]}},
            None,
            400,
            "trip_start_hour: expected an integer (int64) or null, got a boolean",
        ),
        (
            "list for scalar",
            {"json": {"instances": [{**row, "company": ["a"]}]}},
            None,
            400,
            "company: expected a string or null, got a list",
        ),
        (
            "nan",
            {"data": json.dumps({"instances": [{**row, "fare": float("nan")}]}).encode()},
            None,
            400,
            "fare: expected a finite number",
        ),
        ("int64 range", {"json": {"instances": [{**row, "trip_seconds": 2**64}]}}, None, 400, "out of int64's range"),
        (
            "ragged columns",
            {"json": {"inputs": {**{k: [v] for k, v in row.items()}, "fare": [1.0, 2.0]}}},
            None,
            400,
            "every column needs one value per instance",
        ),
        ("too many instances", {"json": big}, None, 413, "1001 instances, more than this server's limit of 1000"),
        ("too large", {"data": b" " * (1024 * 1024 + 1)}, None, 413, "limit of 1048576"),
        (
            "bad encoding",
            {"data": b"{}", "headers": {"Content-Encoding": "br"}},
            None,
            415,
            "Content-Encoding 'br' is not supported",
        ),
        ("bad gzip", {"data": b"not gzip", "headers": {"Content-Encoding": "gzip"}}, None, 400, "not valid gzip data"),
        (
            "gzip bomb",
            {"data": gzip.compress(b" " * (2 * 1024 * 1024)), "headers": {"Content-Encoding": "gzip"}},
            None,
            413,
            "decompressed body is larger",
        ),
        (
            "unknown model",
            {"json": {"instances": [row]}},
            "/v1/models/taxi:predict",
            404,
            "model 'taxi' is not served here",
        ),
        (
            "unknown version",
            {"json": {"instances": [row]}},
            f"/v1/models/{MODEL}/versions/77:predict",
            404,
            "version 77",
        ),
        ("classify", {"json": {"instances": [row]}}, f"/v1/models/{MODEL}:classify", 400, ":classify is not supported"),
        ("other verb", {"json": {"instances": [row]}}, f"/v1/models/{MODEL}:explode", 404, "no such endpoint"),
    ]


def test_every_bad_request_gets_a_4xx_naming_the_problem(served, trips):
    row = instances(trips.head(1))[0]
    refused_before = served.metric("tfpipe_serving_requests_total", version="", role="")
    cases = _bad_cases(row)
    for name, kwargs, path, status, message in cases:
        response = served.http.post(served.url + (path or PREDICT), **kwargs)
        assert response.status_code == status, (name, response.status_code, response.text)
        assert message in response.json()["error"], (name, response.text)
    # Refused before reaching a version: counted with empty version and role, never as a model's error.
    assert served.metric("tfpipe_serving_requests_total", version="", role="") - refused_before == len(cases)
    assert served.metric("tfpipe_serving_requests_total", code="400", role="stable") == 0
    # Wrong methods and unknown paths are JSON errors too.
    wrong_method = served.http.get(served.url + PREDICT)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    assert "use POST" in wrong_method.json()["error"]
    assert served.http.put(f"{served.url}/v1/models/{MODEL}").status_code == 405
    assert served.http.post(served.url + "/healthz").status_code == 405
    assert served.http.get(served.url + "/nowhere").json()["error"].startswith("no such endpoint")
    # The server still answers good requests.
    assert served.predict({"instances": [row]}).status_code == 200


def test_switching_versions_under_concurrent_load_drops_no_request(served, models, trips):
    rows = instances(trips.head(50))
    bodies = [{"instances": [rows[i % 50]]} for i in range(1500)]

    async def scenario() -> list[tuple[int, dict, dict]]:
        load = asyncio.create_task(
            _fire(served.url + PREDICT, bodies, 32, headers=None),
        )
        admin = aiohttp.ClientSession(headers={"Authorization": "Bearer test-admin-token", "X-Actor": "switcher"})
        steps = [
            ("PUT", "/admin/traffic", {"stable": "1", "canary": "2", "canary_percent": 10}),
            ("POST", "/admin/versions", {"version": "5", "model_uri": models.v2}),
            ("PUT", "/admin/traffic", {"stable": "1", "canary": "2", "canary_percent": 60}),
            ("POST", "/admin/promote", None),
            ("PUT", "/admin/traffic", {"stable": "2", "canary": "5", "canary_percent": 50}),
            ("POST", "/admin/rollback", {"reason": "drill", "stable": "1"}),
            ("DELETE", "/admin/versions/5", None),
            ("PUT", "/admin/traffic", {"stable": "2", "canary": "1", "canary_percent": 100}),
            ("PUT", "/admin/traffic", {"stable": "1"}),
        ]
        codes = []
        async with admin:
            for method, path, body in steps:
                await asyncio.sleep(0.05)
                async with admin.request(method, served.url + path, json=body) as response:
                    codes.append((path, response.status, await response.text()))
        results = await load
        assert all(code == 200 for _, code, _ in codes), codes
        return results

    results = asyncio.run(scenario())
    assert len(results) == 1500
    failures = [(status, body) for status, _, body in results if status != 200]
    assert failures == []
    assert {headers["X-Model-Version"] for _, headers, _ in results} >= {"1", "2"}


def test_stopping_finishes_the_requests_in_flight(models, trips):
    harness = start_server(max_batch_size=1, batch_timeout_ms=0)
    harness.load("1", models.v1)
    harness.traffic("1")
    batcher = harness.server.versions["1"].batcher
    run = batcher._run

    def slow(columns):
        time.sleep(0.2)
        return run(columns)

    batcher._run = slow
    rows = instances(trips.head(6))
    results: list = []
    sender = threading.Thread(
        target=lambda: results.extend(
            asyncio.run(_fire(harness.url + PREDICT, [{"instances": [row]} for row in rows], 6))
        )
    )
    sender.start()
    deadline = time.monotonic() + 30
    while batcher.pending < 5 and time.monotonic() < deadline:  # one request in the model, five queued
        time.sleep(0.01)
    assert batcher.pending == 5
    harness.thread.stop()
    sender.join(30)
    assert [status for status, _, _ in results] == [200] * 6
    np.testing.assert_allclose(
        [body["predictions"][0] for _, _, body in results], in_process(models.v1, trips.head(6)), atol=1e-6
    )
    with pytest.raises(requests.ConnectionError):
        requests.get(harness.url + "/healthz", timeout=5)
