"""The model server's health as the monitoring DAG sees it: a probe of /readyz and /metrics, made compact.

The probe runs on the Airflow side (it knows the server's connection); what it found travels to the
monitoring stage as small JSON (XCom), and the stage keeps it in the window's summary. The difference
between two windows' scrapes gives the window's exact request counts, refusals, 5xx and latency histogram
(as Prometheus' `increase()` does, a counter that went down means the server restarted: its value then
counts from zero). Metric names: tfpipe.serving.metrics (this module does not import it: no server here).

Only the standard library, prometheus_client's parser and tfpipe.rollout.metrics (the quantile of a
histogram): both runtimes import this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

REQUESTS = "tfpipe_serving_requests_total"
LATENCY = "tfpipe_serving_request_latency_seconds"
MODEL_LOADED = "tfpipe_serving_model_loaded"
LOG_DROPPED = "tfpipe_serving_request_log_dropped_total"
LOG_LINES = "tfpipe_serving_request_log_lines_total"
REFUSED = ""  # the version label of requests refused before they reached a version


def summarize_metrics(text: str, model: str | None = None) -> dict[str, Any]:
    """The figures of a /metrics scrape the monitoring needs, as small JSON:

    {"versions": {v: {"codes": {code: n}, "latency": {"buckets": {le: n}, "count": n, "sum": s}}},
     "refused": {code: n}, "loaded": [v, ...], "log_lines": n, "log_dropped": n}
    """
    from prometheus_client.parser import text_string_to_metric_families

    versions: dict[str, dict[str, Any]] = {}
    refused: dict[str, float] = {}
    loaded: list[str] = []
    figures: dict[str, Any] = {"log_lines": 0.0, "log_dropped": 0.0}

    def entry(version: str) -> dict[str, Any]:
        return versions.setdefault(version, {"codes": {}, "latency": {"buckets": {}, "count": 0.0, "sum": 0.0}})

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if model is not None and "model" in labels and labels["model"] != model:
                continue
            name, value = sample.name, float(sample.value)
            if name == REQUESTS:
                version, code = labels.get("version", ""), labels.get("code", "")
                if version == REFUSED:
                    refused[code] = refused.get(code, 0.0) + value
                else:
                    codes = entry(version)["codes"]
                    codes[code] = codes.get(code, 0.0) + value
            elif name.startswith(LATENCY) and labels.get("version", "") != REFUSED:
                latency = entry(labels["version"])["latency"]
                if name == LATENCY + "_bucket":
                    latency["buckets"][labels["le"]] = latency["buckets"].get(labels["le"], 0.0) + value
                elif name == LATENCY + "_count":
                    latency["count"] += value
                elif name == LATENCY + "_sum":
                    latency["sum"] += value
            elif name == MODEL_LOADED and value > 0:
                loaded.append(labels.get("version", ""))
            elif name == LOG_LINES:
                figures["log_lines"] += value
            elif name == LOG_DROPPED:
                figures["log_dropped"] += value
    return {"versions": versions, "refused": refused, "loaded": sorted(set(loaded)), **figures}


def _increase(current: float, previous: float | None) -> float:
    if previous is None or current < previous:  # no earlier scrape, or the server restarted
        return current
    return current - previous


def window_delta(current: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """What happened between two summaries of scrapes (the previous one None: everything since start)."""
    previous = previous or {}
    versions: dict[str, Any] = {}
    for version, now in current.get("versions", {}).items():
        before = previous.get("versions", {}).get(version, {})
        codes = {
            code: _increase(count, before.get("codes", {}).get(code)) for code, count in now.get("codes", {}).items()
        }
        buckets = {
            le: _increase(count, before.get("latency", {}).get("buckets", {}).get(le))
            for le, count in now.get("latency", {}).get("buckets", {}).items()
        }
        total = sum(codes.values())
        errors = sum(count for code, count in codes.items() if code.startswith("5"))
        versions[version] = {
            "requests": total,
            "errors": errors,
            "error_rate": errors / total if total else None,
            "p50_ms": histogram_quantile(0.5, buckets) * 1000 if total else None,
            "p99_ms": histogram_quantile(0.99, buckets) * 1000 if total else None,
        }
        for key in ("p50_ms", "p99_ms"):
            if versions[version][key] is not None and math.isnan(versions[version][key]):
                versions[version][key] = None
    refused = {
        code: _increase(count, previous.get("refused", {}).get(code))
        for code, count in current.get("refused", {}).items()
    }
    answered = sum(item["requests"] for item in versions.values())
    refused_total = sum(refused.values())
    return {
        "versions": versions,
        "refused": refused_total,
        "refused_share": refused_total / (answered + refused_total) if answered + refused_total else None,
        "log_dropped": _increase(current.get("log_dropped", 0.0), previous.get("log_dropped")),
    }


def histogram_quantile(q: float, buckets: Mapping[str, float]) -> float:
    """Prometheus' histogram_quantile over cumulative buckets {le: count}: linear inside the bucket (NaN when empty)."""
    from tfpipe.rollout.metrics import histogram_quantile as quantile

    value = quantile(q, sorted(((math.inf if le == "+Inf" else float(le)), count) for le, count in buckets.items()))
    return math.nan if value is None else value
