"""CanaryAnalysisTrigger against a real HTTP /metrics endpoint (aiohttp), run in an asyncio loop.

The endpoint serves the model server's own metrics class while a background task puts traffic through
it; failure modes (unreachable, garbled, restarted) come from the same endpoint misbehaving.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from aiohttp import web

from tests.integration.airflow_stack import free_port
from tfpipe.config import CanaryAnalysisConfig
from tfpipe.serving.metrics import ServingMetrics
from tfpipe_airflow.triggers.rollout import CanaryAnalysisTrigger

MODEL = "big_tipper"
ANALYSIS = CanaryAnalysisConfig(window_seconds=1.5, poll_seconds=0.25, min_requests=50).model_dump(mode="json")


class MetricsEndpoint:
    def __init__(self) -> None:
        self.metrics = ServingMetrics(MODEL)
        self.mode = "ok"
        self.port = free_port()
        self.scrapes = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        if self.mode == "down":
            return web.Response(status=503, text="upstream down")
        if self.mode == "html":
            return web.Response(text="<html>proxy error</html>", content_type="text/html")
        return web.Response(body=self.metrics.exposition(), content_type="text/plain")

    async def traffic(self, canary_error: bool = False, canary_constant: bool = False) -> None:
        draw = random.Random(3)
        while True:
            for _ in range(40):
                self.metrics.observe_request("1", "stable", 200, draw.uniform(0.001, 0.003))
                self.metrics.observe_predictions("1", "stable", [draw.betavariate(2, 5)])
            for _ in range(10):
                code = 500 if canary_error else 200
                self.metrics.observe_request("2", "canary", code, draw.uniform(0.001, 0.003))
                if code == 200:
                    value = 0.42 if canary_constant else draw.betavariate(2, 5)
                    self.metrics.observe_predictions("2", "canary", [value])
            await asyncio.sleep(0.05)


def trigger(url: str, analysis: dict[str, Any] = ANALYSIS) -> CanaryAnalysisTrigger:
    return CanaryAnalysisTrigger(
        metrics_url=url,
        model=MODEL,
        canary_version="2",
        stable_version="1",
        canary_percent=20,
        analysis=analysis,
    )


async def _run(
    endpoint: MetricsEndpoint | None, url: str, during: Any = None, analysis: dict[str, Any] = ANALYSIS, **traffic: bool
) -> tuple[dict, float]:
    runner = None
    tasks = []
    if endpoint is not None:
        app = web.Application()
        app.router.add_get("/metrics", endpoint.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", endpoint.port).start()
        tasks.append(asyncio.create_task(endpoint.traffic(**traffic)))
        if during is not None:
            tasks.append(asyncio.create_task(during(endpoint)))
    started = time.monotonic()
    try:
        events = [event async for event in trigger(url, analysis).run()]
    finally:
        for task in tasks:
            task.cancel()
        if runner is not None:
            await runner.cleanup()
    assert len(events) == 1, "exactly one event"
    return events[0].payload, time.monotonic() - started


def run(
    endpoint: MetricsEndpoint | None, during: Any = None, analysis: dict[str, Any] = ANALYSIS, **traffic: bool
) -> tuple[dict, float]:
    url = f"http://127.0.0.1:{endpoint.port if endpoint else free_port()}/metrics"
    return asyncio.run(_run(endpoint, url, during, analysis, **traffic))


def test_a_healthy_canary_gets_one_successful_event_after_the_window():
    payload, seconds = run(MetricsEndpoint())
    assert payload["verdict"] == "Successful", payload["reasons"]
    assert payload["canary_percent"] == 20
    assert 1.4 <= seconds < 3
    assert payload["measurements"]["canary_requests"] >= 50
    assert payload["reference"]["version"] == "1"


def test_an_erroring_canary_fails_before_the_window_is_over():
    payload, seconds = run(MetricsEndpoint(), canary_error=True)
    assert payload["verdict"] == "Failed"
    assert payload["reasons"][0].startswith("error rate of the canary 100.00%")
    assert payload["measurements"]["ended_early"] is True
    assert seconds < 1.4


def test_a_constant_canary_fails_on_drift():
    payload, _ = run(MetricsEndpoint(), canary_constant=True)
    assert payload["verdict"] == "Failed"
    assert "prediction drift" in payload["reasons"][0]


def test_an_unreachable_metrics_endpoint_is_an_error_not_an_exception():
    payload, seconds = run(None)
    assert payload["verdict"] == "Error"
    [reason] = payload["reasons"]
    assert "could not be read during the 1.5 s window" in reason and "is unreachable" in reason
    assert seconds < 3


@pytest.mark.parametrize(("mode", "words"), [("down", "answered 503"), ("html", "not Prometheus text")])
def test_a_metrics_outage_or_garbage_is_an_error(mode, words):
    endpoint = MetricsEndpoint()
    endpoint.mode = mode
    payload, _ = run(endpoint)
    assert payload["verdict"] == "Error" and words in payload["reasons"][0]


def test_an_outage_for_most_of_the_window_is_an_error():
    async def outage(endpoint: MetricsEndpoint) -> None:
        await asyncio.sleep(0.6)
        endpoint.mode = "down"

    payload, _ = run(MetricsEndpoint(), during=outage)
    assert payload["verdict"] == "Error"
    assert "of the 1.5 s window could be measured" in payload["reasons"][0]


def test_a_short_outage_is_noted_and_the_window_still_judged():
    async def blip(endpoint: MetricsEndpoint) -> None:
        await asyncio.sleep(0.8)
        endpoint.mode = "down"
        await asyncio.sleep(0.3)
        endpoint.mode = "ok"

    # A longer window than the other tests: on a busy machine a 1.5 s window leaves the blip little room.
    longer = {**ANALYSIS, "window_seconds": 3.0}
    payload, _ = run(MetricsEndpoint(), during=blip, analysis=longer)
    assert payload["verdict"] == "Successful"
    assert payload["measurements"]["scrape_errors"] >= 1
    assert any(check.startswith("note: ") for check in payload["checks"])


def test_a_server_restart_during_the_window_is_an_error():
    async def restart(endpoint: MetricsEndpoint) -> None:
        await asyncio.sleep(0.5)
        endpoint.metrics = ServingMetrics(MODEL)

    payload, _ = run(MetricsEndpoint(), during=restart)
    assert payload["verdict"] == "Error" and "the server restarted" in payload["reasons"][0]


def test_a_crash_inside_the_analysis_is_an_error_event(monkeypatch):
    async def boom(self):
        raise RuntimeError("bug")

    monkeypatch.setattr(CanaryAnalysisTrigger, "measure", boom)
    payload, _ = run(MetricsEndpoint())
    assert payload["verdict"] == "Error" and "crashed: RuntimeError: bug" in payload["reasons"][0]


def test_it_serializes_to_its_import_path_and_arguments():
    original = trigger("http://127.0.0.1:8501/metrics")
    classpath, kwargs = original.serialize()
    assert classpath == "tfpipe_airflow.triggers.rollout.CanaryAnalysisTrigger"
    assert CanaryAnalysisTrigger(**kwargs).serialize() == (classpath, kwargs)
