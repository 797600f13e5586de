"""Monitoring alerts reach people: a real webhook receiver, a Slack-shaped one and a real SMTP server.

Each message says what crossed which threshold, by how much, since when, and links the report and the
runbook section; a run with nothing new to send sends nothing.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tfpipe.config import AlertsConfig, MonitoringAlertsConfig
from tfpipe_airflow.operators.monitoring import SendMonitoringAlertsOperator

ALERT = {
    "key": "drift|1|fare",
    "kind": "drift",
    "severity": "critical",
    "title": "Drift against the previous window",
    "version": "1",
    "feature": "fare",
    "metric": "jensen-shannon distance of `fare` from the previous window",
    "value": 0.61,
    "threshold": 0.25,
    "by": 0.36,
    "unit": "",
    "since": "2026-05-09T11:00:00+00:00",
    "headline": "[CRITICAL] Drift against the previous window (`fare` v1)",
    "sentence": "jensen-shannon distance of `fare` from the previous window is 0.61, above the threshold 0.25 by "
    "0.36; since 2026-05-09T11:00:00+00:00. 900 rows against 880 in the previous window",
    "retrain": True,
    "runbook": "docs/runbook.md#drift-against-the-previous-window",
    "report_uri": "gs://bucket/chicago_taxi/monitoring/runs/x/report.html",
    "notify": True,
}


class _Receiver(BaseHTTPRequestHandler):
    bodies: list = []
    headers_seen: list = []
    status = 200

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        type(self).headers_seen.append(dict(self.headers))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver(monkeypatch):
    _Receiver.bodies, _Receiver.headers_seen, _Receiver.status = [], [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks/tfpipe"
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFPIPE_TEST_WEBHOOK",
        json.dumps({"conn_type": "http", "host": url, "password": "s3cret-token"}),  # pragma: allowlist secret
    )
    # A Slack incoming webhook: the URL is the secret, kept as the password.
    monkeypatch.setenv("AIRFLOW_CONN_TFPIPE_TEST_SLACK", json.dumps({"conn_type": "http", "password": url + "/slack"}))
    yield _Receiver
    server.shutdown()


def _operator(channels: MonitoringAlertsConfig, recipients: AlertsConfig | None = None, alerts=None):
    return SendMonitoringAlertsOperator(
        task_id="send_alerts",
        alerts=[ALERT] if alerts is None else alerts,
        report_uri=ALERT["report_uri"],
        window="2026-05-09T12:00:00+00:00 .. 2026-05-09T13:00:00+00:00",
        channels=channels,
        recipients=recipients or AlertsConfig(),
        pipeline="chicago_taxi",
    )


def test_the_webhook_gets_every_alert_with_threshold_value_since_and_links(receiver):
    channels = MonitoringAlertsConfig(
        webhook_conn_id="tfpipe_test_webhook", runbook_url="https://git.example/runbook.md"
    )
    result = _operator(channels).execute({})
    assert result == {"sent": 1, "channels": ["webhook"]}
    body = receiver.bodies[0]
    assert receiver.headers_seen[0]["Authorization"] == "Bearer s3cret-token"
    assert body["pipeline"] == "chicago_taxi" and "1 alert (1 critical)" in body["summary"]
    alert = body["alerts"][0]
    assert (alert["feature"], alert["threshold"], alert["value"], alert["by"]) == ("fare", 0.25, 0.61, 0.36)
    assert alert["since"] == "2026-05-09T11:00:00+00:00" and alert["retrain"] is True
    assert alert["runbook_url"] == "https://git.example/runbook.md#drift-against-the-previous-window"
    assert alert["report_url"] == "https://storage.cloud.google.com/bucket/chicago_taxi/monitoring/runs/x/report.html"


def test_slack_gets_a_message_naming_the_alert_with_its_links(receiver):
    channels = MonitoringAlertsConfig(slack_conn_id="tfpipe_test_slack")
    _operator(channels).execute({})
    body = receiver.bodies[0]
    assert "Drift against the previous window" in body["text"] and "by 0.36" in body["text"]
    section = body["blocks"][1]["text"]["text"]
    assert "`fare`" in section and "|runbook>" in section and "|report>" in section


def test_a_failing_channel_fails_the_task_after_trying_the_others(receiver):
    receiver.status = 500
    channels = MonitoringAlertsConfig(webhook_conn_id="tfpipe_test_webhook", slack_conn_id="tfpipe_test_slack")
    with pytest.raises(Exception, match=r"alerts not delivered by slack.*webhook"):
        _operator(channels).execute({})
    assert len(receiver.bodies) == 2


def test_nothing_to_send_sends_nothing(receiver):
    channels = MonitoringAlertsConfig(webhook_conn_id="tfpipe_test_webhook")
    assert _operator(channels, alerts=[]).execute({}) == {"sent": 0, "channels": []}
    assert receiver.bodies == []


def test_alerts_are_emailed_through_the_smtp_connection(smtp_inbox):
    recipients = AlertsConfig(email=["oncall@example.com"], smtp_conn_id="tfpipe_test_smtp")
    result = _operator(MonitoringAlertsConfig(), recipients).execute({})
    assert result["channels"] == ["email"]
    to, message = smtp_inbox.messages[0]
    assert to == ["oncall@example.com"]
    assert message["Subject"].startswith("[tfpipe] chicago_taxi monitoring: 1 alert (1 critical): Drift")
    html = (
        next(part for part in message.walk() if part.get_content_type() == "text/html")
        .get_payload(decode=True)
        .decode()
    )
    assert "above the threshold 0.25 by 0.36" in html and "#drift-against-the-previous-window" in html
