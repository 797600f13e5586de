"""Usage is measured, not guessed: per-stage estimates for the next run from what stages really used.

Every stage measures itself (`usage` in its result: CPU-seconds of the stage and its children, peak
resident memory, wall time). The ledger keeps that history: the release task records each guarded
task's usage, and `import_stage_results` reads the result files every run leaves under the artifact root
(`_stage_results/<task>.json`), including ad-hoc runs and experiments that named their own data.

An estimate is a percentile (the 90th by default) over the latest runs of one stage of one pipeline:
wall time, CPU-seconds, peak memory, and from them a suggested request: cores (CPU-seconds per wall
second, rounded up), memory (peak plus headroom, to the half GiB) and core-hours.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfpipe.artifacts import run_key
from tfpipe.quota.ledger import QuotaLedger, UsageRecord

# Task ids of the training DAG -> the quota stage names their requests are configured under.
DEFAULT_TASK_STAGES = {
    "ingest_examples": "ingest",
    "validate_examples": "validate",
    "tune_model": "tune_trial",
    "train_model": "train",
    "evaluate_model": "evaluate",
    "canary_rollout": "serve",
}
# Run ids the scheduler or a person gave through Airflow; anything else under run=... is an experiment.
_AIRFLOW_RUN = re.compile(r"^(scheduled|backfill|manual|asset_triggered|dataset_triggered)__")
_RESULT_NAME = re.compile(r"^(?P<task>.+?)(?:-(?P<index>\d+))?\.json$")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class StageEstimate:
    pipeline: str
    stage: str
    runs: int
    percentile: float
    wall_seconds: float
    cpu_seconds: float | None
    peak_rss_mib: float | None
    cores: float | None
    memory_gib: float | None
    cpu_hours: float | None
    sources: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "sources": list(self.sources)}


def estimate(
    history: Iterable[Mapping[str, Any]], *, q: float = 90, max_runs: int = 50, memory_headroom: float = 1.25
) -> list[StageEstimate]:
    """One estimate per (pipeline, stage) from its latest `max_runs` measured runs."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in sorted(history, key=lambda row: row["recorded_at"]):
        if row.get("wall_seconds") is not None:
            groups.setdefault((row["pipeline"], row["stage"]), []).append(row)
    estimates = []
    for (pipeline, stage), rows in sorted(groups.items()):
        rows = rows[-max_runs:]
        wall = percentile([row["wall_seconds"] for row in rows], q)
        cpu_values = [row["cpu_seconds"] for row in rows if row.get("cpu_seconds") is not None]
        rss_values = [row["peak_rss_mib"] for row in rows if row.get("peak_rss_mib") is not None]
        parallelism = [
            row["cpu_seconds"] / row["wall_seconds"]
            for row in rows
            if row.get("cpu_seconds") is not None and row["wall_seconds"] > 0
        ]
        cpu = percentile(cpu_values, q) if cpu_values else None
        rss = percentile(rss_values, q) if rss_values else None
        cores = max(1.0, math.ceil(percentile(parallelism, q) - 0.05)) if parallelism else None
        estimates.append(
            StageEstimate(
                pipeline=pipeline,
                stage=stage,
                runs=len(rows),
                percentile=q,
                wall_seconds=round(wall, 3),
                cpu_seconds=None if cpu is None else round(cpu, 3),
                peak_rss_mib=None if rss is None else round(rss, 1),
                cores=cores,
                memory_gib=None if rss is None else max(0.5, math.ceil(rss * memory_headroom / 1024 * 2) / 2),
                cpu_hours=None if cores is None else round(cores * wall / 3600, 4),
                sources=tuple(sorted({row.get("source") or "airflow" for row in rows})),
            )
        )
    return estimates


def expected_seconds(
    ledger: QuotaLedger, pipeline: str, stage: str, *, q: float = 90, min_runs: int = 3, max_runs: int = 50
) -> float | None:
    """The q-th percentile of the stage's measured wall time, or None with fewer than `min_runs` runs."""
    rows = [row for row in ledger.usage_history(pipeline, stage) if row.get("wall_seconds") is not None]
    rows = rows[-max_runs:]
    if len(rows) < min_runs:
        return None
    return percentile([row["wall_seconds"] for row in rows], q)


def usage_records(
    *,
    pipeline: str,
    stage: str,
    task_id: str,
    run_id: str,
    usages: Sequence[Mapping[str, Any] | None],
    cores: float | None,
    source: str = "airflow",
) -> list[UsageRecord]:
    """Records of one guarded task's instances (a mapped task has one usage per instance; None if it had none).

    The key is the one `import_stage_results` gives the same run's result file, so importing the artifact
    tree later replaces these records instead of counting the run twice.
    """
    records = []
    mapped = len(usages) > 1
    for index, usage in enumerate(usages):
        if not usage:
            continue
        records.append(
            UsageRecord(
                pipeline=pipeline,
                stage=stage,
                record_key=record_key(pipeline, run_id, task_id, index if mapped else -1),
                wall_seconds=_number(usage.get("wall_seconds")),
                cpu_seconds=_number(usage.get("cpu_seconds")),
                peak_rss_mib=_number(usage.get("peak_rss_mib")),
                cores=cores,
                task_id=task_id,
                run_id=run_id,
                map_index=index if mapped else -1,
                source=source,
            )
        )
    return records


def record_key(pipeline: str, run_id: str, task_id: str, map_index: int) -> str:
    return f"{pipeline}/{run_key(run_id)}/{task_id}/{map_index}"


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def import_stage_results(
    ledger: QuotaLedger,
    artifact_root: str | Path,
    pipeline: str,
    task_stages: Mapping[str, str] | None = None,
) -> int:
    """Record the usage in every stage result file under `<root>/<pipeline>/span=*/run=*/_stage_results/`.

    A run id Airflow gave (scheduled__, backfill__, manual__, ...) is recorded as `result-file`; anything else
    (a folder a person made by hand for an experiment) as `experiment`. Re-importing replaces, never duplicates.
    """
    task_stages = {**DEFAULT_TASK_STAGES, **(task_stages or {})}
    root = Path(str(artifact_root).removeprefix("file://")) / pipeline
    records = []
    for path in sorted(root.glob("span=*/run=*/_stage_results/*.json")):
        match = _RESULT_NAME.match(path.name)
        if match is None:
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        usage = result.get("usage") if isinstance(result, dict) else None
        if not usage or usage.get("wall_seconds") is None:
            continue
        run = path.parent.parent.name.removeprefix("run=")
        task = match.group("task")
        index = int(match.group("index")) if match.group("index") else -1
        source = "result-file" if _AIRFLOW_RUN.match(run) else "experiment"
        records.append(
            UsageRecord(
                pipeline=pipeline,
                stage=task_stages.get(task, task),
                record_key=record_key(pipeline, run, task, index),
                wall_seconds=float(usage["wall_seconds"]),
                cpu_seconds=_number(usage.get("cpu_seconds")),
                peak_rss_mib=_number(usage.get("peak_rss_mib")),
                task_id=task,
                run_id=run,
                map_index=index,
                source=source,
                recorded_at=path.stat().st_mtime,
            )
        )
    return ledger.record_usage(records) if records else 0
