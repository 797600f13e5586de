"""The admin API: bearer-token auth, loading, traffic, rollback, promotion and unloading, with their refusals."""

from __future__ import annotations

import logging
import time

from tests.unit.tfpipe.serving.conftest import ADMIN, MODEL, TOKEN, instances, start_server


def test_the_admin_api_needs_the_token(served):
    url = served.url + "/admin/deployment"
    missing = served.http.get(url)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["error"]
    assert served.http.get(url, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert served.http.get(url, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 403
    assert served.http.get(url, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 403
    # Refused before anything happens, whatever the endpoint.
    refused = served.http.put(served.url + "/admin/traffic", json={"stable": "2"})
    assert refused.status_code == 401
    assert served.admin("GET", "/admin/deployment").json()["stable"]["version"] == "1"
    assert served.http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_without_a_configured_token_the_admin_api_is_disabled():
    harness = start_server(admin_token=None)
    try:
        response = harness.admin("GET", "/admin/deployment")
        assert response.status_code == 403
        assert response.json()["error"] == "admin API disabled: TFPIPE_SERVING_ADMIN_TOKEN is not set"
        assert harness.http.get(harness.url + "/admin/deployment").status_code == 403
    finally:
        harness.thread.stop()


def test_the_token_comes_from_the_environment_variable_the_config_names(monkeypatch):
    from tests.conftest import CONFIG_PATH
    from tfpipe.config import load_pipeline_config
    from tfpipe.serving.server import ModelServer

    serving = load_pipeline_config(CONFIG_PATH).serving
    server = ModelServer.from_config(serving, environ={"TFPIPE_SERVING_ADMIN_TOKEN": "from-env"}, request_log=False)
    assert server._admin_token == b"from-env"
    assert ModelServer.from_config(serving, environ={}, request_log=False)._admin_token is None
    assert server.max_batch_size == serving.local.max_batch_size and server.sticky_header == "X-Request-Key"


def test_deployment_describes_the_routing_and_loaded_versions(served, models):
    deployment = served.admin("GET", "/admin/deployment").json()
    assert deployment["model"] == MODEL
    assert deployment["stable"] == {"version": "1", "model_uri": models.v1}
    assert deployment["canary"] is None and deployment["canary_percent"] == 0.0
    assert deployment["loaded"] == [
        {"version": "1", "model_uri": models.v1, "state": "AVAILABLE"},
        {"version": "2", "model_uri": models.v2, "state": "AVAILABLE"},
    ]
    generation = deployment["generation"]
    after = served.traffic("1", "2", 10).json()
    assert after["generation"] == generation + 1
    assert after["canary"] == {"version": "2", "model_uri": models.v2} and after["canary_percent"] == 10.0
    assert served.traffic("1", "2", 10).json()["generation"] == generation + 1  # nothing changed


def test_loading_is_idempotent_and_refuses_what_cannot_serve(served, models, tmp_path):
    again = served.admin("POST", "/admin/versions", {"version": "2", "model_uri": models.v2 + "/"})
    assert again.status_code == 200
    other_uri = served.admin("POST", "/admin/versions", {"version": "2", "model_uri": models.v1})
    assert other_uri.status_code == 409 and "already loaded from" in other_uri.json()["error"]
    (tmp_path / "empty").mkdir()
    cases = [
        ({"version": "7", "model_uri": str(tmp_path / "empty")}, 422, "is not a SavedModel"),
        ({"version": "7", "model_uri": str(tmp_path / "absent")}, 422, "does not exist"),
        ({"version": "7", "model_uri": "relative/model"}, 422, "must be an absolute path"),
        ({"version": "7", "model_uri": models.narrow}, 422, "inputs differ from stable version 1's: it lacks"),
        ({"model_uri": models.v1}, 400, "'version' is required"),
        ({"version": "7"}, 400, "'model_uri' is required"),
        ({"version": "../etc", "model_uri": models.v1}, 400, "must be a version"),
        ({"version": True, "model_uri": models.v1}, 400, "must be a version"),
    ]
    for body, status, message in cases:
        response = served.admin("POST", "/admin/versions", body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"], (body, response.text)
    not_json = served.http.post(served.url + "/admin/versions", data=b"{", headers=ADMIN)
    assert not_json.status_code == 400
    assert [e["version"] for e in served.admin("GET", "/admin/deployment").json()["loaded"]] == ["1", "2"]
    # A version number may come as a JSON number; loading routes no traffic to it.
    loaded = served.admin("POST", "/admin/versions", {"version": 8, "model_uri": models.v2})
    assert loaded.status_code == 200
    assert loaded.json()["stable"]["version"] == "1" and loaded.json()["canary"] is None
    assert {"version": "8", "model_uri": models.v2, "state": "AVAILABLE"} in loaded.json()["loaded"]


def test_traffic_changes_are_checked(served):
    cases = [
        ({"stable": "9"}, 409, "stable version 9 is not loaded"),
        ({"stable": "1", "canary": "9", "canary_percent": 5}, 409, "canary version 9 is not loaded"),
        ({"stable": "1", "canary": "2", "canary_percent": 150}, 422, "from 0 to 100"),
        ({"stable": "1", "canary": "2", "canary_percent": -1}, 422, "from 0 to 100"),
        ({"stable": "1", "canary": "2", "canary_percent": "10"}, 422, "from 0 to 100"),
        ({"stable": "1", "canary": "2"}, 422, "'canary_percent' is required"),
        ({"canary": "2", "canary_percent": 10}, 422, "a canary needs a stable version"),
        ({"stable": None}, 422, "'stable' is required"),
        ({"stable": "1", "canary_percent": 10}, 422, "there is no canary"),
        ({"stable": "1", "canary": "1", "canary_percent": 10}, 422, "both stable and canary"),
        ({"stable": "1", "weights": {}}, 400, "unknown key(s) ['weights']"),
    ]
    generation = served.admin("GET", "/admin/deployment").json()["generation"]
    for body, status, message in cases:
        response = served.admin("PUT", "/admin/traffic", body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"], (body, response.text)
    assert served.admin("GET", "/admin/deployment").json()["generation"] == generation
    assert served.admin("POST", "/admin/traffic", {"stable": "1"}).status_code == 405


def test_rollback_clears_the_canary_at_once(served, models, trips, caplog):
    served.traffic("1", "2", 50)
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="tfpipe.serving.admin"):
        response = served.admin("POST", "/admin/rollback", {"reason": "p99 too high"})
    wall = time.perf_counter() - started
    assert response.status_code == 200
    body = response.json()
    assert body["stable"]["version"] == "1" and body["canary"] is None and body["canary_percent"] == 0.0
    assert body["reason"] == "p99 too high"
    # The swap itself takes microseconds; the bound is generous so a busy machine cannot fail it.
    assert body["seconds"] < 0.5 and wall < 5
    record = next(r for r in caplog.records if "admin rollback" in r.getMessage())
    assert "by pytest" in record.getMessage() and '"canary":"2"' in record.getMessage()
    assert "p99 too high" in record.getMessage()
    rows = instances(trips.head(1))
    assert {served.predict({"instances": rows}).headers["X-Model-Version"] for _ in range(20)} == {"1"}
    # To a named version: that version is stable at 100% in one step.
    to_two = served.admin("POST", "/admin/rollback", {"reason": "drill", "stable": "2"}).json()
    assert to_two["stable"]["version"] == "2" and to_two["canary"] is None
    assert served.admin("POST", "/admin/rollback", {"stable": "42"}).status_code == 409
    assert served.admin("POST", "/admin/rollback").status_code == 200  # no body, no canary: a no-op


def test_promote_keeps_the_old_stable_warm_and_unload_refuses_serving_versions(served, models):
    assert served.admin("POST", "/admin/promote").status_code == 409
    served.traffic("1", "2", 100)
    promoted = served.admin("POST", "/admin/promote").json()
    assert promoted["stable"]["version"] == "2" and promoted["canary"] is None
    assert {"version": "1", "model_uri": models.v1, "state": "AVAILABLE"} in promoted["loaded"]
    assert served.http.get(served.url + f"/v1/models/{MODEL}/versions/1").status_code == 200
    # The old stable is warm: a rollback to it is a routing change only.
    rollback = served.admin("POST", "/admin/rollback", {"stable": "1"}).json()
    assert rollback["stable"]["version"] == "1" and rollback["seconds"] < 0.5
    serving = served.admin("DELETE", "/admin/versions/1")
    assert serving.status_code == 409 and "the stable version" in serving.json()["error"]
    assert served.admin("DELETE", "/admin/versions/99").status_code == 404
    unloaded = served.admin("DELETE", "/admin/versions/2")
    assert unloaded.status_code == 200
    assert [e["version"] for e in unloaded.json()["loaded"]] == ["1"]
    assert served.http.get(served.url + f"/v1/models/{MODEL}/versions/2").status_code == 404
    assert served.metric("tfpipe_serving_model_loaded", version="2") == 0
