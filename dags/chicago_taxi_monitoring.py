"""chicago_taxi_monitoring: watch the served model every hour, alert on what crossed a threshold, ask for retraining.

Each run judges its data interval (one hour; a run triggered from the UI judges the last full hour, or the
window given in the trigger form) of the model server's request log and metrics, per served version:
skew against the version's training data and drift against the previous window (TFDV comparators),
prediction drift against the evaluation set at training time, missing / corrupted / out-of-domain values,
latency, error rate and outages, the share predicted big tippers (quality proxy) and the real AUC once the
trips' labels land, and the training pipeline's health (training time, failed runs, quota).

probe the model server (and count failed training runs) -> monitor the window (ML stage: report, alerts,
summary) -> send the alerts not in their cool-down (e-mail, Slack, webhook) and, when drift or skew crossed a
retraining threshold, an event on the retraining asset that schedules chicago_taxi_training. New spans in
the landing area raise the span-landed asset event too. A healthy window sends nothing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from tfpipe.artifacts import join
from tfpipe.config import load_pipeline_config
from tfpipe_airflow.assets import retraining_asset, span_landed_asset
from tfpipe_airflow.notifiers import failure_notifiers
from tfpipe_airflow.operators.ml_stage import RunMLStageOperator
from tfpipe_airflow.operators.monitoring import (
    DetectLandedSpansOperator,
    MonitoringProbeOperator,
    RequestRetrainingOperator,
    SendMonitoringAlertsOperator,
)
from tfpipe_airflow.templates import FILTERS, MACROS

config = load_pipeline_config(Path(__file__).parent / "configs" / "chicago_taxi.yaml")
monitoring = config.monitoring
assert monitoring is not None and config.serving is not None, "chicago_taxi.yaml needs `monitoring` and `serving`"

WINDOW_START = "{{ params.window_start or data_interval_start.isoformat() }}"
WINDOW_END = "{{ params.window_end or data_interval_end.isoformat() }}"

with DAG(
    dag_id=f"{config.pipeline}_monitoring",
    description=f"Production monitoring of {config.serving.model_name}: skew, drift, quality, latency, outages",
    schedule=CronDataIntervalTimetable(monitoring.schedule, timezone="UTC"),
    start_date=monitoring.start_date,
    catchup=False,
    # One window at a time: each window's alerts are decided from the summaries of the windows before it.
    max_active_runs=1,
    default_args={
        "owner": config.airflow.owner,
        "retries": config.airflow.retries,
        "retry_delay": dt.timedelta(seconds=config.airflow.retry_delay_seconds),
        "on_failure_callback": failure_notifiers(
            channels=monitoring.alerts, alerts=config.alerts, pipeline=config.pipeline
        ),
    },
    params={
        "window_start": Param(
            None,
            type=["null", "string"],
            title="Window start",
            description="ISO 8601 (UTC if no offset), e.g. 2026-05-09T12:00:00Z. Empty: the run's data interval.",
        ),
        "window_end": Param(None, type=["null", "string"], title="Window end", description="Exclusive."),
        "baselines": Param(
            None,
            type=["null", "object"],
            title="Baselines",
            description='Per version (or "*"): {"training_statistics_uri" | "training_data_uri", "eval_uri", '
            '"model_uri", "auc"}. Empty: found through the model registry.',
        ),
    },
    user_defined_macros=MACROS,
    user_defined_filters=FILTERS,
    tags=[*config.airflow.tags, "monitoring"],
    doc_md=__doc__,
) as dag:
    probe = MonitoringProbeOperator(
        task_id="probe_model_server",
        serving=config.serving.local,
        model=config.serving.model_name,
        training_dag_id=f"{config.pipeline}_training",
        timeout=monitoring.outage.probe_timeout_seconds,
        retries=0,  # a server that does not answer is a finding, recorded in the result
    )
    monitor = RunMLStageOperator(
        task_id="monitor_window",
        stage="monitor",
        execution=config.execution,
        arguments={
            "config": config.model_dump_json(),
            "window_start": WINDOW_START,
            "window_end": WINDOW_END,
            "probe": probe.output,
            "baselines": "{{ params.baselines | tojson if params.baselines else '' }}",
            "output_uri": join(
                config.artifacts.root, config.pipeline, "monitoring", "runs", "{{ run_id | tfpipe_run_key }}"
            ),
        },
        result_uri=join(
            config.artifacts.root, config.pipeline, "monitoring", "runs", "{{ run_id | tfpipe_run_key }}.result.json"
        ),
    )
    send_alerts = SendMonitoringAlertsOperator(
        task_id="send_alerts",
        alerts=monitor.output["alerts"],
        report_uri=monitor.output["report_uri"],
        window=f"{WINDOW_START} .. {WINDOW_END}",
        channels=monitoring.alerts,
        recipients=config.alerts,
        pipeline=config.pipeline,
    )
    request_retraining = RequestRetrainingOperator(
        task_id="request_retraining",
        retrain=monitor.output["retrain"],
        reasons=monitor.output["retrain_reasons"],
        report_uri=monitor.output["report_uri"],
        asset=retraining_asset(config.pipeline),
        landing_uri=config.data.landing_uri,
    )
    detect_landed_spans = DetectLandedSpansOperator(
        task_id="detect_landed_spans",
        landing_uri=config.data.landing_uri,
        asset=span_landed_asset(config.pipeline),
    )
    probe >> monitor >> [send_alerts, request_retraining]
