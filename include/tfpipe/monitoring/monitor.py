"""One monitoring window: read the request log and the probe, judge every signal per version, decide alerts.

`monitor_window` is what the `monitor` stage runs. It returns the window's summary (kept in the state for
the next windows: trends, drift baselines, deduplication) and its alerts; a healthy window has none.
Each check compares one figure with one configured threshold and says so in its alert (see
tfpipe.monitoring.alerts); a figure that cannot be judged (too few rows, no baseline) is reported, and
an unjudgeable version with traffic raises `monitoring_blind`, because silence must mean healthy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfpipe import artifacts
from tfpipe.config import MonitoredComparison, PipelineConfig
from tfpipe.monitoring import baselines as baselines_module
from tfpipe.monitoring import health, labels, logs, service
from tfpipe.monitoring import statistics as st
from tfpipe.monitoring.alerts import Alert, decide, runbook_anchor
from tfpipe.monitoring.state import PREDICTIONS_FILE, MonitoringState, default_state_uri

log = logging.getLogger(__name__)
HISTORY = dt.timedelta(days=3)  # how far back summaries are read for trends and expected traffic


@dataclasses.dataclass
class WindowResult:
    summary: dict[str, Any]
    alerts: list[Alert]
    window: logs.LogWindow
    statistics: dict[str, Any]  # version -> window statistics
    previous_statistics: dict[str, Any]
    baselines: dict[str, baselines_module.Baseline]
    history: list[dict[str, Any]]
    schema_anomalies: dict[str, list[dict[str, str]]]


def state_for(config: PipelineConfig, state_uri: str | None = None) -> MonitoringState:
    monitoring = config.monitoring
    uri = state_uri or (monitoring.state_uri if monitoring else None)
    return MonitoringState(uri or default_state_uri(config.artifacts.root, config.pipeline))


def request_log_dir(config: PipelineConfig, override: str | None = None) -> str:
    if override:
        return override
    if config.monitoring and config.monitoring.request_log_dir:
        return config.monitoring.request_log_dir
    if config.serving is not None:
        return config.serving.local.request_log.dir
    raise ValueError("no request log: set monitoring.request_log_dir or serving.local.request_log.dir")


class _Checks:
    """Collects the alerts of one window."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def add(self, **fields: Any) -> None:
        self.alerts.append(Alert(**fields))


def _operating_threshold(config: PipelineConfig) -> float:
    return config.evaluation.operating_threshold if config.evaluation else 0.5


def _min_auc(config: PipelineConfig) -> float | None:
    monitoring = config.monitoring
    if monitoring is not None and monitoring.labels.min_auc is not None:
        return monitoring.labels.min_auc
    if config.evaluation is not None:
        bounds = config.evaluation.thresholds.overall.get("auc")
        if bounds is not None:
            return bounds.min
    return None


def _baseline_specs(
    config: PipelineConfig, versions: list[str], given: dict[str, baselines_module.BaselineSpec]
) -> dict[str, baselines_module.BaselineSpec | None]:
    out: dict[str, baselines_module.BaselineSpec | None] = {}
    for version in versions:
        spec = given.get(version) or given.get(baselines_module.WILDCARD)
        if spec is None and config.registry is not None and config.evaluation is not None:
            spec = baselines_module.from_registry(
                version,
                tracking_uri=config.registry.tracking_uri,
                model_name=config.evaluation.model_name,
                artifact_root=config.artifacts.root,
                pipeline=config.pipeline,
            )
        out[version] = spec
    return out


def _service_from_log(requests: pa.Table, version: str) -> dict[str, Any]:
    rows = requests.filter(pc.equal(requests.column("version"), version))
    count = rows.num_rows
    if count == 0:
        return {"lines": 0}
    latency = np.asarray(logs.to_numpy(rows.column("latency_ms")), dtype=float)
    status = np.asarray(logs.to_numpy(rows.column("status")), dtype=float)
    errors = int(np.sum(status >= 500))
    return {
        "lines": count,
        "errors": errors,
        "error_rate": errors / count,
        "p50_ms": float(np.nanpercentile(latency, 50)) if count else None,
        "p99_ms": float(np.nanpercentile(latency, 99)) if count else None,
    }


def longest_gap(window: logs.LogWindow, now: dt.datetime) -> tuple[float, float | None]:
    """(longest stretch in seconds without a logged successful prediction inside the window, its start)."""
    requests = window.requests
    ok = requests.filter(pc.equal(requests.column("status"), 200))
    if ok.num_rows == 0:
        return 0.0, None
    times = np.sort(np.asarray(logs.to_numpy(pc.cast(ok.column("ts"), pa.int64())), dtype=float) / 1e6)
    start, end = window.start.timestamp(), min(window.end, now).timestamp()
    candidates: list[tuple[float, float]] = []
    if window.sample_ratio >= 1.0:
        diffs = np.diff(times)
        if len(diffs):
            index = int(np.argmax(diffs))
            candidates.append((float(diffs[index]), float(times[index])))
    else:
        # Inside each block read, consecutive lines; between blocks, the time their bytes do not explain.
        blocks = sorted(window.block_times)
        firsts = np.array([block[0] for block in blocks])
        block_of = np.searchsorted(firsts, times, side="right")
        diffs = np.diff(times)
        same = block_of[1:] == block_of[:-1]
        if same.any():
            inside = np.where(same, diffs, 0.0)
            index = int(np.argmax(inside))
            candidates.append((float(inside[index]), float(times[index])))
        traffic_seconds = max(1.0, end - start)
        byte_rate = window.bytes_in_window / traffic_seconds
        for before, after in itertools.pairwise(blocks):
            if before[3] != after[3]:
                continue  # another file: its bytes between are unknown
            region_bytes = after[4] - (before[4] + before[2])
            region_seconds = after[0] - before[1]
            excess = region_seconds - region_bytes / byte_rate if byte_rate > 0 else 0.0
            candidates.append((excess, before[1]))
    if window.covers_start:
        candidates.append((float(times[0] - start), start))
    candidates.append((float(end - times[-1]), float(times[-1])))
    seconds, at = max(candidates)
    return max(0.0, seconds), at


def _fmt_time(epoch: float | None) -> str:
    return "" if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def monitor_window(
    config: PipelineConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    state: MonitoringState,
    output_uri: str,
    probe: dict[str, Any] | None = None,
    baseline_specs: dict[str, baselines_module.BaselineSpec] | None = None,
    log_dir: str | None = None,
    now: dt.datetime | None = None,
) -> WindowResult:
    from tfpipe.validation.tfdv_checks import feature_types, load_schema

    monitoring = config.monitoring
    if monitoring is None:
        raise ValueError(f"{config.source_path}: no `monitoring` section")
    now = now or dt.datetime.now(dt.UTC)
    length = end - start
    model = config.serving.model_name if config.serving else None
    schema = load_schema(config.validation.schema_path)
    types = feature_types(schema)
    buckets = config.validation.histogram_buckets
    environment = config.validation.serving_environment
    threshold = _operating_threshold(config)
    report_uri = artifacts.join(output_uri, "report.html")
    runbook = monitoring.alerts.runbook_url.split("#", 1)[0]
    checks = _Checks()

    def alert(kind: str, **fields: Any) -> None:
        checks.add(kind=kind, runbook=f"{runbook}#{runbook_anchor(kind)}", report_uri=report_uri, **fields)

    started = time.perf_counter()
    window = logs.read_window(
        request_log_dir(config, log_dir),
        start,
        end,
        known_features=types,
        budget_bytes=int(monitoring.sample_mib * (1 << 20)),
        model=model,
    )
    history = state.summaries_before(start, max(HISTORY, dt.timedelta(minutes=monitoring.alerts.cooldown_minutes)))
    previous_summary = next(
        (s for s in reversed(history) if s["window"]["end"] == start.isoformat() and s.get("probe")), None
    )
    probe = probe or {}
    scrape = probe.get("metrics")
    delta = None
    if scrape is not None:
        previous_scrape = (previous_summary or {}).get("probe", {}).get("metrics")
        delta = service.window_delta(scrape, previous_scrape) if previous_scrape is not None else None

    requests, instances = window.requests, window.instances
    versions = sorted({v for v in requests.column("version").to_pylist() if v})
    features = [name for name in window.features if name in types]
    specs = _baseline_specs(config, versions, baseline_specs or {})
    baselines = {
        version: baselines_module.load(
            version,
            specs[version],
            state=state,
            schema=schema,
            histogram_buckets=buckets,
            operating_threshold=threshold,
        )
        for version in versions
    }
    previous = state.previous_window(start, length)
    figures: dict[str, dict[str, Any]] = {}
    window_stats: dict[str, Any] = {}
    previous_stats: dict[str, Any] = {}
    anomalies: dict[str, list[dict[str, str]]] = {}
    domain = st.domains(schema)
    scale = 1.0 / window.sample_ratio if window.sample_ratio > 0 else 1.0
    previous_window_log: logs.LogWindow | None = None

    for version in versions:
        rows = instances.filter(pc.equal(instances.column("version"), version))
        figure: dict[str, Any] = {"instances_read": rows.num_rows}
        stats = st.window_statistics(rows, features, schema, buckets)
        window_stats[version] = stats
        state.write_bytes(
            artifacts.join(state.window_uri(start, end), "statistics", f"{version}.pb"), stats.SerializeToString()
        )
        anomalies[version] = st.schema_anomalies(stats, schema, environment)
        baseline = baselines[version]
        training_rows = baseline.statistics.datasets[0].num_examples if baseline.statistics is not None else 0

        # Skew against the training data.
        skew: dict[str, Any] = {}
        if baseline.statistics is not None:
            skew = st.skew(baseline.statistics, stats, schema, monitoring.skew)
            _alert_distances(
                alert,
                "skew",
                skew,
                monitoring.skew,
                version=version,
                rows=rows.num_rows,
                reference_rows=training_rows,
                reference="the training data",
                detail=f"{rows.num_rows} served rows read against {training_rows} training rows",
                note_retrain=True,
            )
        figure["skew"] = {feature: round(m["value"], 5) for feature, m in skew.items()}

        # Drift against the previous window of the same length.
        prior = None
        if previous is not None and artifacts.exists(artifacts.join(previous[2], "statistics", f"{version}.pb")):
            import tensorflow_data_validation as tfdv

            prior = tfdv.load_stats_binary(artifacts.join(previous[2], "statistics", f"{version}.pb"))
        elif previous is None and window.oldest_ts is not None and window.oldest_ts < start:
            if previous_window_log is None:
                previous_window_log = logs.read_window(
                    request_log_dir(config, log_dir),
                    start - length,
                    start,
                    known_features=types,
                    budget_bytes=int(monitoring.sample_mib * (1 << 20)),
                    model=model,
                )
            earlier = previous_window_log.instances
            earlier = earlier.filter(pc.equal(earlier.column("version"), version))
            if earlier.num_rows:
                prior = st.window_statistics(earlier, features, schema, buckets)
        drift: dict[str, Any] = {}
        if prior is not None:
            previous_stats[version] = prior
            prior_rows = prior.datasets[0].num_examples if prior.datasets else 0
            drift = st.drift(stats, prior, schema, monitoring.drift, environment)
            _alert_distances(
                alert,
                "drift",
                drift,
                monitoring.drift,
                version=version,
                rows=rows.num_rows,
                reference_rows=prior_rows,
                reference="the previous window",
                detail=f"{rows.num_rows} rows against {prior_rows} in the previous window",
            )
        figure["drift"] = {feature: round(m["value"], 5) for feature, m in drift.items()}

        # Data quality: missing, out-of-domain, corrupted values.
        quality = st.data_quality(rows, features, domain)
        training_missing = st.missing_shares(baseline.statistics)
        dq = monitoring.data_quality
        corrupted = window.corrupted.get(version, {})
        for feature, q in quality.items():
            if q["rows"] < dq.min_examples:
                continue
            base = training_missing.get(feature, 0.0)
            if baseline.statistics is not None and q["missing_share"] - base > dq.max_missing_increase:
                alert(
                    "missing_values",
                    severity="critical" if q["missing_share"] - base > 2 * dq.max_missing_increase else "warning",
                    version=version,
                    feature=feature,
                    metric=f"share of requests missing `{feature}` above the training data's {base:.2%}",
                    value=q["missing_share"] - base,
                    threshold=dq.max_missing_increase,
                    unit="%",
                    detail=f"{q['missing']} of {q['rows']} rows read miss it ({q['missing_share']:.1%})",
                )
            if q["out_of_domain_share"] > dq.max_out_of_domain_share:
                alert(
                    "out_of_domain",
                    severity="warning",
                    version=version,
                    feature=feature,
                    metric=f"share of `{feature}` values outside the schema's domain",
                    value=q["out_of_domain_share"],
                    threshold=dq.max_out_of_domain_share,
                    unit="%",
                    detail=f"{q['out_of_domain']} of {q['rows'] - q['missing']} present values",
                )
            bad = corrupted.get(feature, 0)
            q["corrupted"] = bad
            if rows.num_rows and bad / rows.num_rows > dq.max_corrupted_share:
                alert(
                    "corrupted_values",
                    severity="warning",
                    version=version,
                    feature=feature,
                    metric=f"share of `{feature}` values in the log of the wrong type or not finite",
                    value=bad / rows.num_rows,
                    threshold=dq.max_corrupted_share,
                    unit="%",
                    detail=f"{bad} of {rows.num_rows} rows read",
                )
        figure["quality"] = {
            feature: {key: round(value, 5) for key, value in q.items() if key.endswith("share")}
            for feature, q in quality.items()
        }

        # Predictions: drift from the evaluation set at training time; the share predicted big tippers.
        predictions = rows.column("prediction").drop_null().to_numpy()
        pm = monitoring.predictions
        if len(predictions):
            summary_now = baselines_module.prediction_summary(predictions, threshold)
            figure["predictions"] = summary_now
            if baseline.predictions is not None and len(predictions) >= pm.min_examples:
                divergence = st.jensen_shannon(summary_now["histogram"], baseline.predictions["histogram"])
                figure["prediction_drift"] = round(divergence, 5)
                if divergence > pm.max_drift:
                    retrain = pm.retrain_drift is not None and divergence > pm.retrain_drift
                    alert(
                        "prediction_drift",
                        severity="warning",
                        version=version,
                        metric="Jensen-Shannon divergence of the predictions from those on the evaluation set at "
                        "training time",
                        value=divergence,
                        threshold=pm.max_drift,
                        retrain=retrain,
                        detail=f"{len(predictions)} predictions read against {baseline.predictions['count']}",
                    )
                change = summary_now["positive_share"] - baseline.predictions["positive_share"]
                figure["positive_share_change"] = round(change, 5)
                if abs(change) > pm.max_positive_share_change:
                    alert(
                        "positive_share",
                        severity="warning",
                        version=version,
                        metric=f"change of the share predicted big tippers (above {threshold:g}) from the evaluation "
                        f"set's {baseline.predictions['positive_share']:.1%}",
                        value=abs(change),
                        threshold=pm.max_positive_share_change,
                        unit="%",
                        detail=f"now {summary_now['positive_share']:.1%} ({'up' if change > 0 else 'down'})",
                    )
            before = next(
                (
                    s["versions"][version]["predictions"]
                    for s in reversed(history)
                    if s["window"]["end"] == start.isoformat()
                    and "predictions" in s.get("versions", {}).get(version, {})
                ),
                None,
            )
            if before and len(predictions) >= pm.min_examples and before.get("count", 0) >= pm.min_examples:
                change = summary_now["positive_share"] - before["positive_share"]
                if abs(change) > pm.max_positive_share_change:
                    alert(
                        "positive_share",
                        severity="warning",
                        version=version,
                        feature="(previous window)",
                        metric="change of the share predicted big tippers from the previous window's "
                        f"{before['positive_share']:.1%}",
                        value=abs(change),
                        threshold=pm.max_positive_share_change,
                        unit="%",
                        detail=f"now {summary_now['positive_share']:.1%}",
                    )

        # Latency and errors: exact from the metrics when two scrapes bound the window, else from the log.
        from_log = _service_from_log(requests, version)
        exact = (delta or {}).get("versions", {}).get(version)
        sm = monitoring.service
        if exact and exact["requests"] > 0:
            figure["service"] = {**exact, "source": "metrics"}
        else:
            figure["service"] = {
                **from_log,
                "requests": round(from_log["lines"] * scale),
                "source": "log" + ("" if scale == 1 else " (sampled)"),
            }
        svc = figure["service"]
        judged_requests = svc.get("requests", 0) if svc["source"] == "metrics" else from_log["lines"]
        if judged_requests >= sm.min_requests:
            for key, limit, kind, words in (
                ("p50_ms", sm.max_p50_ms, "latency_p50", "median request latency"),
                ("p99_ms", sm.max_p99_ms, "latency_p99", "99th percentile request latency"),
            ):
                if svc.get(key) is not None and svc[key] > limit:
                    alert(
                        kind,
                        severity="warning" if kind == "latency_p50" else "critical",
                        version=version,
                        metric=words,
                        value=svc[key],
                        threshold=limit,
                        unit="ms",
                        detail=f"from the {svc['source']}, {judged_requests} requests",
                    )
            if svc.get("error_rate") is not None and svc["error_rate"] > sm.max_error_rate:
                alert(
                    "error_rate",
                    severity="critical",
                    version=version,
                    metric="share of requests answered with a server error (5xx)",
                    value=svc["error_rate"],
                    threshold=sm.max_error_rate,
                    unit="%",
                    detail=f"from the {svc['source']}, {judged_requests} requests",
                )

        numeric = st.numeric_summary(stats)
        figure["numeric"] = numeric
        figure["categories"] = st.top_share(stats)
        figure["baseline"] = {
            "source": baseline.source,
            "auc": baseline.auc,
            "positive_share": (baseline.predictions or {}).get("positive_share"),
            "problems": baseline.problems,
        }
        if baseline.problems and rows.num_rows:
            alert(
                "monitoring_blind",
                severity="warning",
                version=version,
                direction="state",
                metric=f"version {version} served traffic but has no baseline to judge it against",
                value=None,
                threshold=None,
                detail="; ".join(baseline.problems),
            )
        figures[version] = figure

    # Requests refused before they reached a version (malformed), from the metrics.
    dq = monitoring.data_quality
    if delta is not None and delta["refused_share"] is not None and delta["refused_share"] > dq.max_rejected_share:
        alert(
            "rejected_requests",
            severity="warning",
            metric="share of predict requests the server refused as malformed (4xx)",
            value=delta["refused_share"],
            threshold=dq.max_rejected_share,
            unit="%",
            detail=f"{delta['refused']:.0f} refused in the window",
        )

    # Outages: the server does not answer; no predictions where traffic is expected; a long gap.
    om = monitoring.outage
    if probe:
        if not probe.get("reachable", True):
            alert(
                "server_unreachable",
                severity="critical",
                direction="state",
                metric=f"the model server at {probe.get('url', '?')} did not answer: {probe.get('error', '')}",
                value=None,
                threshold=None,
                detail=f"probed at {probe.get('probed_at', '')}",
            )
        elif not probe.get("ready", True):
            alert(
                "server_not_ready",
                severity="critical",
                direction="state",
                metric=f"the model server at {probe.get('url', '?')} answers but is not ready: "
                f"{probe.get('reason', '')}",
                value=None,
                threshold=None,
            )
    ok_lines = int(pc.sum(pc.equal(requests.column("status"), 200)).as_py() or 0) if requests.num_rows else 0
    served = ok_lines * scale
    if delta is not None:
        served = sum(item["requests"] - item["errors"] for item in delta["versions"].values())
    previous_traffic = [
        s.get("served", 0.0) * length.total_seconds() / max(1.0, _length_of(s)) for s in history[-om.history_windows :]
    ]
    expected = None
    if om.expect_traffic == "always":
        expected = float(om.expected_min_requests)
    elif om.expect_traffic == "learned" and previous_traffic:
        mean = sum(previous_traffic) / len(previous_traffic)
        expected = mean if mean >= om.expected_min_requests else None
    if expected is not None and served < om.min_traffic_share * expected:
        alert(
            "no_predictions",
            severity="critical",
            direction="below",
            metric="successful predictions in the window",
            value=served,
            threshold=om.min_traffic_share * expected,
            detail=f"the previous windows served {expected:.0f} on average",
        )
    gap, gap_at = longest_gap(window, now)
    if (
        (expected is not None or ok_lines > 0)
        and gap > om.max_gap_minutes * 60
        and served >= om.min_traffic_share * (expected or 0)
    ):
        alert(
            "prediction_gap",
            severity="critical",
            metric="longest stretch without a logged prediction",
            value=gap / 60,
            threshold=om.max_gap_minutes,
            unit="min",
            detail=f"from {_fmt_time(gap_at)}" + ("" if window.sample_ratio >= 1 else " (estimated from a sample)"),
        )

    # Late labels: the real AUC of windows whose trips' labels have arrived.
    label_results = _late_labels(config, state, window, start, end, features, types, history)
    for window_key_, per_version in label_results.items():
        for version, result in per_version.items():
            if result["auc"] is None or result["labeled"] < monitoring.labels.min_labeled:
                continue
            training_auc = baselines[version].auc if version in baselines else None
            minimum = _min_auc(config)
            floor = [
                value
                for value in (minimum, None if training_auc is None else training_auc - monitoring.labels.max_auc_drop)
                if value is not None
            ]
            if floor and result["auc"] < max(floor):
                alert(
                    "auc",
                    severity="critical",
                    version=version,
                    direction="below",
                    metric=f"AUC on the labelled trips served in window {window_key_}",
                    value=result["auc"],
                    threshold=max(floor),
                    detail=f"{result['labeled']} trips joined to their labels ({result['match_share']:.0%} of those "
                    f"served); AUC at training time {training_auc if training_auc is not None else 'unknown'}",
                )

    # Training pipeline health.
    tm = monitoring.training
    runs = health.training_runs(config.artifacts.root, config.pipeline)
    durations = health.training_duration(runs, start, end, tm.history_runs, tm.min_history)
    for run in durations:
        if run["ratio"] is not None and run["ratio"] > tm.max_duration_ratio:
            alert(
                "training_duration",
                severity="warning",
                feature=run["run"].rsplit("/", 1)[-1],
                metric="training time over the median of the previous trainings",
                value=run["ratio"],
                threshold=tm.max_duration_ratio,
                unit="x",
                detail=f"{run['seconds']:.0f} s against {run['median_before']:.0f} s ({run['run']})",
            )
    failed_total = (probe.get("training") or {}).get("failed_runs")
    previous_failed = next(
        (
            s.get("training", {}).get("failed_runs")
            for s in reversed(history)
            if s.get("training", {}).get("failed_runs") is not None
        ),
        None,
    )
    if (
        tm.alert_on_failed_runs
        and failed_total is not None
        and previous_failed is not None
        and failed_total > previous_failed
    ):
        alert(
            "training_failures",
            severity="warning",
            metric=f"failed runs of {(probe.get('training') or {}).get('dag_id', 'the training DAG')} since the "
            "previous window",
            value=float(failed_total - previous_failed),
            threshold=0.0,
            detail=f"{failed_total} failed runs in all",
        )
    quota = health.quota_utilization(config.quota.metrics_path if config.quota else None)
    for item in quota:
        if item["utilization"] >= tm.max_quota_utilization:
            alert(
                "quota_usage",
                severity="warning",
                feature=f"{item.get('scope')}:{item.get('subject')}:{item.get('resource')}",
                metric=f"used share of the {item.get('scope')} quota of {item.get('subject')} "
                f"for {item.get('resource')}",
                value=item["utilization"],
                threshold=tm.max_quota_utilization,
                unit="%",
            )

    alerts = decide(
        checks.alerts,
        history,
        window_start=start,
        window_end=end,
        cooldown=dt.timedelta(minutes=monitoring.alerts.cooldown_minutes),
    )
    summary = {
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "log": {
            "files": len(window.files),
            "bytes_in_window": window.bytes_in_window,
            "bytes_read": window.bytes_read,
            "sample_ratio": round(window.sample_ratio, 6),
            "lines_read": window.lines_read,
            "requests_read": requests.num_rows,
            "instances_read": instances.num_rows,
            "oldest": window.oldest_ts.isoformat() if window.oldest_ts else None,
            "covers_start": window.covers_start,
            "slow_lines": window.slow_lines,
            "seconds": round(window.parse_seconds, 3),
        },
        "served": served,
        "expected": expected,
        "longest_gap_seconds": round(gap, 1),
        "versions": figures,
        "probe": {key: value for key, value in probe.items() if key != "training"},
        "metrics_delta": delta,
        "training": {
            "failed_runs": failed_total,
            "runs": [
                {"run": r["run"], "seconds": r["seconds"], "finished": _fmt_time(r["finished"])} for r in runs[-20:]
            ],
            "quota": quota,
        },
        "labels": label_results,
        "alerts": [a.to_dict() for a in alerts],
        "report_uri": report_uri,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return WindowResult(summary, alerts, window, window_stats, previous_stats, baselines, history, anomalies)


def _measure(measured: dict[str, Any]) -> str:
    return str(measured["measure"]).replace("_", "-")


def _alert_distances(
    alert: Callable[..., None],
    kind: str,
    distances: dict[str, Any],
    comparison: MonitoredComparison,
    *,
    version: str,
    rows: int,
    reference_rows: int,
    reference: str,
    detail: str,
    note_retrain: bool = False,
) -> None:
    """Alert on each feature whose distance from `reference` (skew: the training data; drift: the previous
    window) is above its threshold, when both sides hold min_examples rows; marks each one judged or not.
    `note_retrain`: the detail also names the retraining threshold."""
    judged = rows >= comparison.min_examples and reference_rows >= comparison.min_examples
    for feature, measured in distances.items():
        policy = comparison.features.get(feature)
        if policy is None or policy.threshold is None:
            continue
        measured["judged"] = judged
        if judged and measured["value"] > policy.threshold:
            retrain = policy.retrain is not None and measured["value"] > policy.retrain
            note = (
                f"; the retraining threshold is {policy.retrain:g}"
                if note_retrain and policy.retrain is not None
                else ""
            )
            alert(
                kind,
                severity=policy.severity,
                version=version,
                feature=feature,
                metric=f"{_measure(measured)} distance of `{feature}` from {reference}",
                value=measured["value"],
                threshold=policy.threshold,
                retrain=retrain,
                detail=detail + note,
            )


def _length_of(summary: dict[str, Any]) -> float:
    window = summary["window"]
    return (dt.datetime.fromisoformat(window["end"]) - dt.datetime.fromisoformat(window["start"])).total_seconds()


def _late_labels(
    config: PipelineConfig,
    state: MonitoringState,
    window: logs.LogWindow,
    start: dt.datetime,
    end: dt.datetime,
    features: list[str],
    types: dict[str, int],
    history: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Keep this window's fingerprints; join every window still in the lookback with the labels now known."""
    monitoring = config.monitoring
    assert monitoring is not None
    instances = window.instances
    answered = instances.filter(pc.is_valid(instances.column("prediction")))
    versions = sorted({v for v in answered.column("version").to_pylist() if v})
    codes = {version: index for index, version in enumerate(versions)}
    keys = labels.fingerprints({name: answered.column(name).to_pandas() for name in features}, types)
    state.write_arrays(
        artifacts.join(state.window_uri(start, end), PREDICTIONS_FILE),
        keys=keys,
        predictions=np.asarray(logs.to_numpy(answered.column("prediction")), dtype=np.float32),
        versions=np.array([codes[v] for v in answered.column("version").to_pylist()], dtype=np.int16),
        names=np.array(versions, dtype="U64"),
        features=np.array(features, dtype="U64"),
    )
    lookback = dt.timedelta(hours=monitoring.labels.lookback_hours)
    source = monitoring.labels.uri or config.data.landing_uri
    # Labels arrive with spans (monthly): the windows still in the lookback are joined again only when a
    # labelled file changed since the previous window began, so an ordinary hour reads no labels at all.
    if not labels.csv_files(source, newer_than=(start - (end - start)).timestamp()):
        return {}
    pending = [
        (window_start, window_end, uri)
        for window_start, window_end, uri in state.windows()
        if window_end > start - lookback and window_end <= start
    ] + [(start, end, state.window_uri(start, end))]
    results: dict[str, dict[str, Any]] = {}
    tables: dict[tuple[str, ...], dict[int, int]] = {}
    for window_start, window_end, uri in pending:
        path = artifacts.join(uri, PREDICTIONS_FILE)
        if not artifacts.exists(path):
            continue
        data = state.read_arrays(path)
        columns = tuple(str(name) for name in data["features"])
        if not len(data["keys"]) or not columns:
            continue
        if columns not in tables:
            oldest = min(item[0] for item in pending).timestamp()
            tables[columns], _ = labels.labelled_trips(
                source, list(columns), types, config.data.label, newer_than=oldest
            )
        joined = labels.join_window(
            data["keys"],
            data["predictions"].astype(float),
            data["versions"],
            [str(n) for n in data["names"]],
            tables[columns],
        )
        if joined:
            results[f"{window_start.isoformat()}/{window_end.isoformat()}"] = joined
    return {key: value for key, value in results.items() if any(r["labeled"] for r in value.values())}
