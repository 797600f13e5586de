"""WebhookNotifier and SlackWebhookNotifier: Airflow notifiers that POST JSON to a URL from a connection.

Neither the http nor the slack provider is part of this bundle's Airflow runtime, so these are ours: a
notifier is a `BaseNotifier` (usable as `on_failure_callback` too) with a templated message, and the
connection holds where it goes and the secret:

- the URL: the connection's extra `url`, else its password when that is a URL (a Slack incoming webhook's
  URL *is* its secret), else its host when that is a URL, else `<conn type http|https>://host[:port]/<schema>`;
- `Authorization: Bearer <password>` for the generic webhook when the password is not the URL.

A non-2xx answer or an unreachable URL raises, so the task (or its retry) says the alert was not delivered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from airflow.sdk import BaseHook, BaseNotifier

DEFAULT_TIMEOUT = 15.0


def connection_target(conn_id: str) -> tuple[str, str | None]:
    """(URL, bearer token or None) of a webhook connection."""
    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson or {}
    password = conn.password or None
    if extra.get("url"):
        return str(extra["url"]), password
    if password and password.startswith(("http://", "https://")):
        return password, None
    host = (conn.host or "").strip()
    if host.startswith(("http://", "https://")):
        url = host
    else:
        if not host:
            raise ValueError(f"connection {conn_id!r} has no URL: set its extra 'url', or its host")
        scheme = conn.conn_type if conn.conn_type in ("http", "https") else (extra.get("scheme") or "https")
        url = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    if conn.schema:
        url = url.rstrip("/") + "/" + conn.schema.lstrip("/")
    return url, password


class WebhookNotifier(BaseNotifier):
    """POST a JSON document (templated) to the URL of an Airflow connection.

    :param webhook_conn_id: the connection (see the module's docstring).
    :param payload: the JSON document; its strings are rendered as Jinja templates.
    :param timeout: seconds before the POST counts as failed.
    """

    template_fields: Sequence[str] = ("payload", "webhook_conn_id")

    def __init__(self, *, webhook_conn_id: str, payload: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.webhook_conn_id = webhook_conn_id
        self.payload = dict(payload)
        self.timeout = timeout

    def body(self) -> dict[str, Any]:
        return self.payload

    def notify(self, context: Any) -> None:
        url, token = connection_target(self.webhook_conn_id)
        headers = {"Content-Type": "application/json", "User-Agent": "tfpipe-monitoring"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = httpx.post(
            url, content=json.dumps(self.body(), default=str).encode(), headers=headers, timeout=self.timeout
        )
        if response.status_code >= 300:
            raise RuntimeError(f"webhook {self.webhook_conn_id} answered {response.status_code}: {response.text[:300]}")
        self.log.info("posted to webhook connection %s (%s)", self.webhook_conn_id, response.status_code)


class SlackWebhookNotifier(WebhookNotifier):
    """A Slack message through an incoming webhook (the URL in the connection, e.g. its password).

    :param text: the message (Slack mrkdwn), templated; shown in notifications and as the fallback.
    :param blocks: Slack Block Kit blocks, optional.
    """

    template_fields: Sequence[str] = ("text", "blocks", "webhook_conn_id")

    def __init__(
        self,
        *,
        slack_conn_id: str,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(webhook_conn_id=slack_conn_id, payload={}, timeout=timeout)
        self.text = text
        self.blocks = blocks

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"text": self.text}
        if self.blocks:
            body["blocks"] = self.blocks
        return body
