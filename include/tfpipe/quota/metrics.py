"""Quota metrics for monitoring, in Prometheus' text format, from the ledger.

Written as a node_exporter textfile (`--collector.textfile.directory`) after every reservation, release
and refusal: the file is replaced whole (write to a temporary file, then rename), so a scrape never reads
half of it, and every writer writes the whole ledger's state, so the last writer is always complete.
The monitoring DAG reads the same figures with `read_textfile` (or from the ledger with `collect`).

- tfpipe_quota_limit{scope, subject, resource}        shared budget (subject "*"), each pipeline's cap,
                                                      and each provider's own quota
- tfpipe_quota_used{pipeline, resource}               what counts against the limits now: held cores,
                                                      memory, GPUs; core-/GPU-hours spent in the window
                                                      (pipeline "*": all pipelines)
- tfpipe_quota_reserved{pipeline, resource}           held by active reservations
- tfpipe_quota_utilization{scope, subject, resource}  used / limit (what the alert share compares with)
- tfpipe_quota_provider_used{provider, resource}      the provider's own figure of use
- tfpipe_quota_active_reservations{pipeline}
- tfpipe_quota_refusals_total{pipeline, resource}     refused requests since the ledger began
- tfpipe_quota_alert_firing{scope, subject, resource} 1 while an alert has fired and not re-armed
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from tfpipe.quota.ledger import PIPELINE, PROVIDER, SHARED, QuotaLedger
from tfpipe.quota.resources import RESOURCES


def registry_from_status(status: Mapping[str, Any]) -> CollectorRegistry:
    registry = CollectorRegistry()
    limit = Gauge("tfpipe_quota_limit", "Quota limit", ["scope", "subject", "resource"], registry=registry)
    used = Gauge("tfpipe_quota_used", "Counted against the limits", ["pipeline", "resource"], registry=registry)
    reserved = Gauge(
        "tfpipe_quota_reserved", "Held by active reservations", ["pipeline", "resource"], registry=registry
    )
    utilization = Gauge(
        "tfpipe_quota_utilization", "Used share of a limit", ["scope", "subject", "resource"], registry=registry
    )
    provider_used = Gauge(
        "tfpipe_quota_provider_used", "The provider's own figure of use", ["provider", "resource"], registry=registry
    )
    active = Gauge("tfpipe_quota_active_reservations", "Active reservations", ["pipeline"], registry=registry)
    refusals = Gauge(
        "tfpipe_quota_refusals_total", "Refused quota requests", ["pipeline", "resource"], registry=registry
    )
    firing = Gauge(
        "tfpipe_quota_alert_firing",
        "An alert fired and not re-armed",
        ["scope", "subject", "resource"],
        registry=registry,
    )
    for pipeline, values in status["used"].items():
        for resource in RESOURCES:
            used.labels(pipeline, resource).set(values.get(resource, 0.0))
    for pipeline, values in status["reserved"].items():
        for resource in RESOURCES:
            reserved.labels(pipeline, resource).set(values.get(resource, 0.0))
    for item in status["limits"]:
        scope, subject, resource = item["scope"], item["subject"], item["resource"]
        limit.labels(scope, subject, resource).set(item["limit"])
        if scope == PROVIDER:
            provider_used.labels(subject, resource).set(item.get("used") or 0.0)
            value = item.get("used") or 0.0
        else:
            value = status["used"].get(subject if scope == PIPELINE else "*", {}).get(resource, 0.0)
        if item["limit"] > 0:
            utilization.labels(scope, subject, resource).set(round(value / item["limit"], 4))
    pipelines = {key for key in status["used"] if key != "*"}
    for pipeline in sorted(pipelines):
        active.labels(pipeline).set(sum(1 for row in status["active"] if row["pipeline"] == pipeline))
    for item in status["refusals"]:
        refusals.labels(item["pipeline"], item["resource"]).set(item["count"])
    for item in status["alerts"]:
        firing.labels(item["scope"], item["subject"], item["resource"]).set(1 if item["fired"] else 0)
    return registry


def collect(ledger: QuotaLedger, window_seconds: float = 86400.0) -> CollectorRegistry:
    return registry_from_status(ledger.status(window_seconds))


def write_textfile(ledger: QuotaLedger, path: str | Path, window_seconds: float = 86400.0) -> Path:
    """Replace the textfile with the ledger's current state (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), collect(ledger, window_seconds))
    return path


def read_textfile(path: str | Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Metric name -> [(labels, value)]: how the monitoring DAG reads the quota figures."""
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(Path(path).read_text()):
        for sample in family.samples:
            families.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return families


__all__ = ["PIPELINE", "PROVIDER", "SHARED", "collect", "read_textfile", "registry_from_status", "write_textfile"]
