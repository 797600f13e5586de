"""Jinja helpers shared by the DAG files: the data span of a run and its artifact locations.

A run's artifacts live under <root>/<pipeline>/span=<partition>/run=<run key>/, where the partition
is the run's monthly span (scheduled runs and backfills) or `adhoc-<hash of data_uri>` when a person
named the data. Both are pure functions of the run, so a cleared task writes where it wrote before.

A run scheduled by an asset event (new data landed, or monitoring asked for retraining) has no data
interval: its span is the newest span the triggering events name in their extra (`{"spans": [...]}`),
which the events keep, so a cleared task still finds the same span.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from tfpipe.artifacts import ArtifactLayout, join, run_key


def spans_of_events(triggering_asset_events: Mapping[Any, Any] | None) -> list[str]:
    """Every span (YYYY-MM) the events that triggered a run name in their extra's `spans`, sorted."""
    spans: set[str] = set()
    for events in (triggering_asset_events or {}).values():
        for event in events or []:
            extra = getattr(event, "extra", None) if not isinstance(event, Mapping) else event.get("extra")
            for span in (extra or {}).get("spans") or []:
                if isinstance(span, str) and len(span) == 7 and span[4] == "-":
                    spans.add(span)
    return sorted(spans)


def data_span(data_interval_start: dt.datetime | None, triggering_asset_events: Mapping[Any, Any] | None = None) -> str:
    """The monthly span (YYYY-MM) of a run's data interval, else the newest span its triggering asset events
    name, else ""."""
    if data_interval_start is not None:
        return data_interval_start.strftime("%Y-%m")
    spans = spans_of_events(triggering_asset_events)
    return spans[-1] if spans else ""


def artifact_partition(
    params: Mapping[str, Any],
    data_interval_start: dt.datetime | None,
    triggering_asset_events: Mapping[Any, Any] | None = None,
) -> str:
    data_uri = params.get("data_uri")
    if data_uri:
        return "adhoc-" + hashlib.sha256(str(data_uri).encode()).hexdigest()[:12]
    span = data_span(data_interval_start, triggering_asset_events)
    if not span:
        raise ValueError(
            "this run has neither a data_uri param, nor a data interval, nor an asset event naming a span: "
            "trigger it with one of them"
        )
    return span


def previous_span(span: dt.datetime | str | None) -> str:
    """The span before a span (a data interval start or "YYYY-MM"), or "" when there is none."""
    if not span:
        return ""
    if isinstance(span, str):
        year, month = int(span[:4]), int(span[5:7])
    else:
        year, month = span.year, span.month
    return f"{year - (month == 1)}-{(month - 2) % 12 + 1:02d}"


def approval_record(response: Mapping[str, Any] | None) -> str:
    """What an ApprovalOperator's response says, as the JSON the register stage records as lineage."""
    if not response:
        return json.dumps({"mode": "required", "decision": "none"})
    user = response.get("responded_by_user") or {}
    chosen = response.get("chosen_options") or []
    return json.dumps(
        {
            "mode": "required",
            "decision": chosen[0] if chosen else "none",
            "approver": user.get("name") or user.get("id") or "unknown",
            "approver_id": user.get("id"),
            "approved_at": str(response.get("responded_at") or ""),
        },
        sort_keys=True,
    )


MACROS = {
    "tfpipe_approval": approval_record,
    "tfpipe_data_span": data_span,
    "tfpipe_partition": artifact_partition,
    "tfpipe_previous_span": previous_span,
}
FILTERS = {"tfpipe_run_key": run_key}

DATA_SPAN = "{{ tfpipe_data_span(data_interval_start, triggering_asset_events) }}"
DATA_URI = "{{ params.data_uri or '' }}"


def previous_span_uri(landing_uri: str) -> str:
    """A template for the previous span's landing folder; "" for a run on named data (no previous span)."""
    span = "tfpipe_data_span(data_interval_start, triggering_asset_events)"
    return (
        f"{{{{ '' if params.data_uri or not {span} else "
        f"'{landing_uri.rstrip('/')}/span=' ~ tfpipe_previous_span({span}) }}}}"
    )


def run_output_uri(layout: ArtifactLayout, output: str) -> str:
    """A template for one output folder of the current run."""
    partition = "{{ tfpipe_partition(params, data_interval_start, triggering_asset_events) }}"
    return join(layout.root, layout.pipeline, f"span={partition}", "run={{ run_id | tfpipe_run_key }}", output)


def stage_result_uri(layout: ArtifactLayout) -> str:
    """A template for where the current task's stage writes its result."""
    # A mapped task's instances each get their own file.
    return run_output_uri(
        layout, "_stage_results/{{ ti.task_id }}{{ '' if ti.map_index < 0 else '-%d' % ti.map_index }}.json"
    )
