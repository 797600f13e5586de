"""Fixtures shared by the tfpipe_airflow unit tests."""

from __future__ import annotations

import json
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller

from tests.integration.airflow_stack import free_port


class _Inbox:
    """Keeps every e-mail the SMTP server accepts, as (recipients, parsed message)."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler protocol
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp_inbox(monkeypatch):
    """A real SMTP server, and the Airflow connection `tfpipe_test_smtp` the alerts go through."""
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    extra = json.dumps({"disable_tls": True, "disable_ssl": True, "timeout": 5, "retry_limit": 1})
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFPIPE_TEST_SMTP",
        json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra}),
    )
    yield inbox
    controller.stop()
