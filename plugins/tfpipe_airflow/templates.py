"""Jinja helpers shared by the DAG files: the data span of a run and its artifact locations.

A run's artifacts live under <root>/<pipeline>/span=<partition>/run=<run key>/, where the partition
is the run's monthly span (scheduled runs and backfills) or `adhoc-<hash of data_uri>` when a person
named the data. Both are pure functions of the run, so a cleared task writes where it wrote before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from tfpipe.artifacts import ArtifactLayout, join, run_key


def data_span(data_interval_start: dt.datetime | None) -> str:
    """The monthly span (YYYY-MM) of a run's data interval, or "" when it has none."""
    return data_interval_start.strftime("%Y-%m") if data_interval_start is not None else ""


def artifact_partition(params: Mapping[str, Any], data_interval_start: dt.datetime | None) -> str:
    data_uri = params.get("data_uri")
    if data_uri:
        return "adhoc-" + hashlib.sha256(str(data_uri).encode()).hexdigest()[:12]
    span = data_span(data_interval_start)
    if not span:
        raise ValueError("this run has neither a data_uri param nor a data interval: trigger it with one of them")
    return span


def previous_span(data_interval_start: dt.datetime | None) -> str:
    """The span before the run's span (YYYY-MM), or "" when the run has no data interval."""
    if data_interval_start is None:
        return ""
    year, month = data_interval_start.year, data_interval_start.month
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

DATA_SPAN = "{{ tfpipe_data_span(data_interval_start) }}"
DATA_URI = "{{ params.data_uri or '' }}"


def previous_span_uri(landing_uri: str) -> str:
    """A template for the previous span's landing folder; "" for a run on named data (no previous span)."""
    return (
        "{{ '' if params.data_uri or not data_interval_start else "
        f"'{landing_uri.rstrip('/')}/span=' ~ tfpipe_previous_span(data_interval_start) }}}}"
    )


def run_output_uri(layout: ArtifactLayout, output: str) -> str:
    """A template for one output folder of the current run."""
    partition = "{{ tfpipe_partition(params, data_interval_start) }}"
    return join(layout.root, layout.pipeline, f"span={partition}", "run={{ run_id | tfpipe_run_key }}", output)


def stage_result_uri(layout: ArtifactLayout) -> str:
    """A template for where the current task's stage writes its result."""
    # A mapped task's instances each get their own file.
    return run_output_uri(
        layout, "_stage_results/{{ ti.task_id }}{{ '' if ti.map_index < 0 else '-%d' % ti.map_index }}.json"
    )
