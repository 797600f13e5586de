"""The server's Prometheus metrics, in a registry of its own (never prometheus_client's global one).

The canary analysis reads these names; changing one breaks it:

- tfpipe_serving_requests_total{model,version,role,code}: predict requests by outcome (HTTP status). A
  request refused before it reaches a version (bad input, unknown model) has version="" and role="".
- tfpipe_serving_request_latency_seconds{model,version,role}: time from the request's arrival to its answer.
- tfpipe_serving_predictions{model,version,role}: predicted probabilities, 20 equal buckets.
- tfpipe_serving_model_errors_total{model,version}: model calls that raised or returned non-finite values.
- tfpipe_serving_batch_size: rows per model call.
- tfpipe_serving_traffic_percent{model,role}, tfpipe_serving_model_loaded{model,version}: the deployment.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)
PREDICTION_BUCKETS = tuple(round(0.05 * step, 2) for step in range(1, 21))
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tfpipe_serving_requests_total",
            "Predict requests by served version, role and HTTP status code.",
            ["model", "version", "role", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "tfpipe_serving_request_latency_seconds",
            "Predict request latency, from arrival to answer.",
            ["model", "version", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Histogram(
            "tfpipe_serving_predictions",
            "Predicted probabilities.",
            ["model", "version", "role"],
            buckets=PREDICTION_BUCKETS,
            registry=r,
        )
        self.model_errors = Counter(
            "tfpipe_serving_model_errors_total",
            "Model calls that raised or returned non-finite values, per request.",
            ["model", "version"],
            registry=r,
        )
        self.fallbacks = Counter(
            "tfpipe_serving_canary_fallbacks_total",
            "Requests the canary failed that stable answered instead.",
            ["model", "version"],
            registry=r,
        )
        self.batch_size = Histogram(
            "tfpipe_serving_batch_size", "Rows per model call.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.traffic_percent = Gauge(
            "tfpipe_serving_traffic_percent", "Share of split traffic per role.", ["model", "role"], registry=r
        )
        self.model_loaded = Gauge(
            "tfpipe_serving_model_loaded", "1 for each loaded, warmed-up version.", ["model", "version"], registry=r
        )
        self.request_log_lines = Counter(
            "tfpipe_serving_request_log_lines_total", "Lines written to the request log.", registry=r
        )
        self.request_log_dropped = Counter(
            "tfpipe_serving_request_log_dropped_total",
            "Request log lines dropped because the writer fell behind or failed.",
            registry=r,
        )
        self._children: dict[tuple, tuple] = {}

    def observe_request(self, version: str, role: str, code: int, seconds: float) -> None:
        key = (version, role, code)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(self.model, version, role, str(code)),
                self.latency.labels(self.model, version, role),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_predictions(self, version: str, role: str, values: list[float]) -> None:
        child = self.predictions.labels(self.model, version, role)
        for value in values:
            child.observe(value)

    def set_traffic(self, stable: str | None, canary_percent: float) -> None:
        self.traffic_percent.labels(self.model, "stable").set(0.0 if stable is None else 100.0 - canary_percent)
        self.traffic_percent.labels(self.model, "canary").set(canary_percent)

    def set_loaded(self, version: str, loaded: bool) -> None:
        if loaded:
            self.model_loaded.labels(self.model, version).set(1)
        else:
            with contextlib.suppress(KeyError):
                self.model_loaded.remove(self.model, version)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
