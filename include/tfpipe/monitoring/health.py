"""Training pipeline health: training time against its history, failed runs, compute quota usage.

- Training time: every final training writes `<run>/model/metrics.json` with `train_seconds`
  (tfpipe.stages.train). A training that finished in the window is compared with the median of the
  ones before it.
- Failed runs: Airflow knows them; the DAG's probe counts the training DAG's failed runs (Task SDK) and
  passes the count, and the increase since the previous window is what is new.
- Quota: the quota ledger's Prometheus textfile (`quota.metrics_path`, tfpipe.quota.metrics):
  `tfpipe_quota_utilization{scope,subject,resource}` against `monitoring.training.max_quota_utilization`.
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from pathlib import Path
from typing import Any

from tfpipe import artifacts

log = logging.getLogger(__name__)
QUOTA_UTILIZATION = "tfpipe_quota_utilization"


def training_runs(root: str, pipeline: str) -> list[dict[str, Any]]:
    """Final trainings under the artifact root, oldest first: {run, finished (epoch s), seconds}."""
    pattern = artifacts.join(root, pipeline, "span=*", "run=*", "model", "metrics.json")
    if artifacts.is_remote(pattern):
        import tensorflow as tf

        paths = tf.io.gfile.glob(pattern)
        finished = {path: tf.io.gfile.stat(path).mtime_nsec / 1e9 for path in paths}
    else:
        paths = [
            str(path) for path in Path(artifacts.local_path(root)).glob(f"{pipeline}/span=*/run=*/model/metrics.json")
        ]
        finished = {path: Path(path).stat().st_mtime for path in paths}
    runs = []
    for path in paths:
        try:
            metrics = artifacts.read_json(path)
        except (OSError, ValueError):
            continue
        seconds = metrics.get("train_seconds")
        if isinstance(seconds, int | float) and seconds > 0:
            runs.append({"run": path.rsplit("/model/", 1)[0], "finished": finished[path], "seconds": float(seconds)})
    return sorted(runs, key=lambda run: run["finished"])


def training_duration(
    runs: list[dict[str, Any]], start: dt.datetime, end: dt.datetime, history_runs: int, min_history: int
) -> list[dict[str, Any]]:
    """Trainings that finished in the window, each with the median of the ones before it (when enough)."""
    out = []
    for index, run in enumerate(runs):
        if not start.timestamp() <= run["finished"] < end.timestamp():
            continue
        earlier = [item["seconds"] for item in runs[:index]][-history_runs:]
        median = statistics.median(earlier) if len(earlier) >= min_history else None
        out.append({**run, "median_before": median, "ratio": run["seconds"] / median if median else None})
    return out


def quota_utilization(path: str | None) -> list[dict[str, Any]]:
    """{scope, subject, resource, utilization} from the quota ledger's textfile; [] when there is none."""
    if not path or not Path(path).is_file():
        return []
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(Path(path).read_text()):
        for sample in family.samples:
            if sample.name == QUOTA_UTILIZATION:
                out.append({**sample.labels, "utilization": float(sample.value)})
    return out
