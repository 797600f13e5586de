"""Monitor: one window of production traffic, judged per model version; alerts and retraining decided.

    python -m tfpipe monitor --config JSON --window-start ISO --window-end ISO --output-uri URI
        [--probe JSON] [--baselines JSON] [--state-uri URI] [--request-log-dir DIR]

Reads the window of the model server's request log (tfpipe.monitoring.logs) and the probe of the server
that the DAG made (readiness, metrics, failed training runs), compares every signal with the thresholds of
`monitoring` in the pipeline config, and writes `report.html`, `alerts.json` and `summary.json` to the
output folder (and the summary to the monitoring state, for the next windows). Alerts are a result, not a
failure: the stage succeeds and the DAG sends them; it fails only when it cannot judge (no schema, an
unreadable state), so that a silent monitoring is never mistaken for a healthy system.

The result (XCom) carries the alerts to send now (deduplicated, with a cool-down), whether retraining is
asked for and why, and the report's location.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from typing import Any

from tfpipe import artifacts
from tfpipe.errors import StageError

log = logging.getLogger(__name__)
REPORT_FILE = "report.html"
ALERTS_FILE = "alerts.json"
SUMMARY_FILE = "summary.json"
MAX_ALERTS_IN_RESULT = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the pipeline config as JSON (PipelineConfig)")
    parser.add_argument("--window-start", required=True, help="the window's start (ISO 8601; UTC if naive)")
    parser.add_argument("--window-end", required=True, help="the window's end (ISO 8601; UTC if naive), exclusive")
    parser.add_argument("--output-uri", required=True, help="this run's monitoring folder")
    parser.add_argument("--probe", default="", help="JSON: what the DAG's probe of the model server found")
    parser.add_argument("--baselines", default="", help="JSON {version or '*': {training_statistics_uri, ...}}")
    parser.add_argument("--state-uri", default="", help="default: monitoring.state_uri")
    parser.add_argument("--request-log-dir", default="", help="default: monitoring.request_log_dir")


def _time(text: str, name: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise StageError(f"--{name} {text!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _json(text: str, name: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StageError(f"--{name} is not JSON: {exc}") from None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tfpipe.config import PipelineConfig

    config = PipelineConfig.model_validate_json(args.config)
    if config.monitoring is None:
        raise StageError("the pipeline config has no `monitoring` section")
    start, end = _time(args.window_start, "window-start"), _time(args.window_end, "window-end")
    if end <= start:
        raise StageError(f"the window ends ({end.isoformat()}) before it starts ({start.isoformat()})")

    from tfpipe.monitoring import baselines, monitor, report

    try:
        specs = baselines.parse_specs(args.baselines)
    except ValueError as exc:
        raise StageError(f"--baselines: {exc}") from None
    state = monitor.state_for(config, args.state_uri or None)
    with artifacts.staged_output(args.output_uri) as staging:
        result = monitor.monitor_window(
            config,
            start,
            end,
            state=state,
            output_uri=args.output_uri,
            probe=_json(args.probe, "probe"),
            baseline_specs=specs,
            log_dir=args.request_log_dir or None,
        )
        report.render(
            staging / REPORT_FILE,
            model=config.serving.model_name if config.serving else config.pipeline,
            result=result,
            config=config,
        )
        artifacts.write_json(str(staging / ALERTS_FILE), [alert.to_dict() for alert in result.alerts])
        artifacts.write_json(str(staging / SUMMARY_FILE), result.summary)
    # Last: a window whose summary is written was judged whole (the next windows read it).
    summary_uri = state.write_summary(start, end, result.summary)

    alerts = result.alerts
    for alert in alerts:
        (log.error if alert.severity == "critical" else log.warning)(
            "%s: %s%s", alert.headline(), alert.sentence(), "" if alert.notify else " (not sent again: cool-down)"
        )
    if not alerts:
        log.info("healthy: no alert in %s .. %s", start.isoformat(), end.isoformat())
    retrain = [alert for alert in alerts if alert.retrain]
    to_send = [alert.to_dict() for alert in alerts if alert.notify][:MAX_ALERTS_IN_RESULT]
    report_uri = artifacts.join(args.output_uri, REPORT_FILE)
    log.info("report: %s", report_uri)
    return {
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "healthy": not alerts,
        "alert_count": len(alerts),
        "alerts": to_send,
        "retrain": bool(retrain),
        "retrain_reasons": [f"{a.headline()}: {a.sentence()}" for a in retrain],
        "versions": sorted(result.summary["versions"]),
        "served": result.summary["served"],
        "sample_ratio": result.summary["log"]["sample_ratio"],
        "report_uri": report_uri,
        "summary_uri": summary_uri,
        "monitoring_uri": args.output_uri,
    }
