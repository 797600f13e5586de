"""A candidate that is NOT BLESSED: the run skips deployment and an e-mail goes out through a real SMTP server."""

from __future__ import annotations

import json
import logging

from tests.integration.airflow_stack import free_port
from tfpipe_airflow.operators.gates import candidate_is_blessed

REASONS = [
    "auc 0.7100 on payment_type=Credit Card is below the minimum 0.75 (by 0.0400)",
    "required slice payment_type=<Cash> has 3 examples, fewer than min_slice_size (50)",
]


def _context():
    from types import SimpleNamespace

    return {"dag": SimpleNamespace(dag_id="chicago_taxi_training"), "run_id": "scheduled__2017-01-01"}


def test_the_reasons_go_to_the_alert_recipients(smtp_inbox):
    blessed = candidate_is_blessed(
        False,
        REASONS,
        "/artifacts/run/evaluation/report.html",
        alert_email=["ml-oncall@example.com"],
        smtp_conn_id="tfpipe_test_smtp",
        **_context(),
    )
    assert blessed is False
    [(recipients, message)] = smtp_inbox.messages
    assert recipients == ["ml-oncall@example.com"]
    assert "NOT BLESSED" in message["Subject"] and "scheduled__2017-01-01" in message["Subject"]
    body = next(part for part in message.walk() if part.get_content_type() == "text/html").get_payload(decode=True)
    text = body.decode()
    assert "payment_type=Credit Card is below the minimum 0.75" in text
    assert "payment_type=&lt;Cash&gt;" in text, "reasons are escaped, not markup"
    assert "/artifacts/run/evaluation/report.html" in text


def test_a_blessed_candidate_sends_nothing(smtp_inbox):
    assert candidate_is_blessed(True, [], alert_email=["ml-oncall@example.com"], smtp_conn_id="tfpipe_test_smtp")
    assert smtp_inbox.messages == []


def test_a_mail_server_that_is_down_does_not_hide_the_decision(monkeypatch, caplog):
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFPIPE_TEST_SMTP",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": free_port(),
                "extra": '{"disable_tls": true, "disable_ssl": true, "timeout": 2, "retry_limit": 1}',
            }
        ),
    )
    with caplog.at_level(logging.WARNING):
        assert (
            candidate_is_blessed(False, REASONS, alert_email=["a@example.com"], smtp_conn_id="tfpipe_test_smtp")
            is False
        )
    assert "NOT BLESSED" in caplog.text and "could not send the NOT BLESSED e-mail" in caplog.text
