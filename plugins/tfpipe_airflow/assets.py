"""The assets the tfpipe DAGs share: one module, imported by the DAG that emits and the DAG that listens.

- `retraining_asset(pipeline)`: the monitoring DAG emits an event on it when drift or skew of served
  traffic crosses a retraining threshold (`monitoring.skew|drift.features.*.retrain`,
  `monitoring.predictions.retrain_drift`); the event's extra says why and links the report.
- `span_landed_asset(pipeline)`: an event per new span of data in the landing area; extra `{"spans": [...]}`.
  The monitoring DAG's `detect_landed_spans` emits it for span folders that changed in its window; whatever
  lands data may also post it itself (Airflow's REST API: POST /api/v2/assets/events with the asset's id).

The training DAG schedules on both, besides its monthly timetable (see docs/runbook.md "Retraining").
URIs use our own scheme: these are signals, not files (Airflow accepts any scheme for an asset URI).
"""

from __future__ import annotations

from airflow.sdk import Asset

SCHEME = "tfpipe"


def retraining_asset(pipeline: str) -> Asset:
    return Asset(name=f"{pipeline}_retraining", uri=f"{SCHEME}://{pipeline}/retraining", group="tfpipe")


def span_landed_asset(pipeline: str) -> Asset:
    return Asset(name=f"{pipeline}_span_landed", uri=f"{SCHEME}://{pipeline}/spans", group="tfpipe")
