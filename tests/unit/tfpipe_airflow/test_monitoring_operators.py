"""The monitoring DAG's Airflow side: the probe, the retraining and span-landed asset events, the DAG's shape."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from tests.integration.airflow_stack import free_port
from tfpipe.config import LocalServingConfig, RequestLogConfig
from tfpipe_airflow.assets import retraining_asset, span_landed_asset
from tfpipe_airflow.operators.monitoring import (
    DetectLandedSpansOperator,
    MonitoringProbeOperator,
    RequestRetrainingOperator,
)

METRICS = b"""# TYPE tfpipe_serving_requests_total counter
tfpipe_serving_requests_total{model="big_tipper",version="3",role="stable",code="200"} 42.0
tfpipe_serving_model_loaded{model="big_tipper",version="3"} 1.0
"""


class _Server(BaseHTTPRequestHandler):
    ready = True

    def do_GET(self):
        if self.path == "/readyz":
            body = b'{"status": "ready", "reason": "stable version 3 is serving", "stable": "3", "canary": null}'
            self.send_response(200 if type(self).ready else 503)
        else:
            body = METRICS
            self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serving(port: int) -> LocalServingConfig:
    return LocalServingConfig(
        host="127.0.0.1", port=port, conn_id="tfpipe_no_such_conn", request_log=RequestLogConfig(dir="/tmp/x")
    )


def test_the_probe_reads_readiness_metrics_and_failed_training_runs():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = MonitoringProbeOperator(
            task_id="probe", serving=_serving(server.server_address[1]), model="big_tipper", training_dag_id="t"
        )
        ti = SimpleNamespace(get_dr_count=lambda dag_id, states: 4 if (dag_id, states) == ("t", ["failed"]) else -1)
        found = probe.execute({"ti": ti})
    finally:
        server.shutdown()
    assert found["reachable"] and found["ready"] and found["stable"] == "3"
    assert found["metrics"]["versions"]["3"]["codes"] == {"200": 42.0} and found["metrics"]["loaded"] == ["3"]
    assert found["training"] == {"dag_id": "t", "failed_runs": 4}


def test_a_server_that_does_not_answer_is_a_finding_not_a_failure():
    probe = MonitoringProbeOperator(task_id="probe", serving=_serving(free_port()), model="big_tipper", timeout=2)
    found = probe.execute({"ti": SimpleNamespace()})
    assert found["reachable"] is False and "ConnectError" in found["error"]


def test_retraining_emits_an_asset_event_with_its_reasons_only_when_asked():
    asset = retraining_asset("chicago_taxi")
    operator = RequestRetrainingOperator(
        task_id="request_retraining", retrain=True, reasons=["drift of fare"], report_uri="/r.html", asset=asset
    )
    assert asset in operator.outlets
    events = {asset: SimpleNamespace(extra=None)}
    operator.execute({"outlet_events": events, "data_interval_start": "a", "data_interval_end": "b"})
    assert events[asset].extra["reasons"] == ["drift of fare"] and events[asset].extra["report_uri"] == "/r.html"
    operator.retrain = False
    with pytest.raises(AirflowSkipException):
        operator.execute({"outlet_events": events})


def test_a_span_that_landed_in_the_window_emits_the_span_landed_event(tmp_path):
    asset = span_landed_asset("chicago_taxi")
    (tmp_path / "span=2026-04").mkdir()
    (tmp_path / "span=2026-04" / "trips.csv").write_text("a\n1\n")
    (tmp_path / "span=2026-03").mkdir()
    old = tmp_path / "span=2026-03" / "trips.csv"
    old.write_text("a\n1\n")
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    operator = DetectLandedSpansOperator(task_id="detect", landing_uri=str(tmp_path), asset=asset)
    now = dt.datetime.now(dt.UTC)
    events = {asset: SimpleNamespace(extra=None)}
    context = {
        "outlet_events": events,
        "data_interval_start": now - dt.timedelta(hours=1),
        "data_interval_end": now + dt.timedelta(minutes=1),
    }
    assert operator.execute(context) == ["2026-04"]
    assert events[asset].extra == {"spans": ["2026-04"]}
    context["data_interval_start"] = now + dt.timedelta(seconds=30)
    with pytest.raises(AirflowSkipException):
        operator.execute(context)


def test_the_monitoring_dag_is_hourly_triggerable_and_wired(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import PROJECT_ROOT

    monkeypatch.setenv("TFPIPE_ALERT_WEBHOOK_CONN_ID", "tfpipe_alerts")

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "chicago_taxi_monitoring.py"))
    assert bag.import_errors == {}
    dag = bag.dags["chicago_taxi_monitoring"]
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable" and dag.max_active_runs == 1
    assert {"window_start", "window_end", "baselines"} <= set(dag.params)
    assert dag.get_task("monitor_window").upstream_task_ids == {"probe_model_server"}
    assert dag.get_task("send_alerts").upstream_task_ids == {"monitor_window"}
    assert dag.get_task("request_retraining").outlets == [retraining_asset("chicago_taxi")]
    assert dag.get_task("detect_landed_spans").outlets == [span_landed_asset("chicago_taxi")]
    # A monitoring that cannot run is itself an alert, on every configured channel.
    callbacks = dag.get_task("monitor_window").on_failure_callback
    assert [type(c).__name__ for c in callbacks] == ["WebhookNotifier"]
