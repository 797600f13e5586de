"""Notifiers: where monitoring alerts go (e-mail, Slack, a generic webhook), whichever are configured.

`alert_notifiers` builds one notifier per configured channel for a batch of alerts (one message per
monitoring run, one paragraph per alert); `failure_notifiers` builds templated ones for a failed task.
E-mail uses the smtp provider's SmtpNotifier; Slack and the webhook use our own HTTP notifiers
(tfpipe_airflow.notifiers.webhook): neither the slack nor the http provider is installed in this bundle's
Airflow runtime.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tfpipe.config import AlertsConfig, MonitoringAlertsConfig

SEVERITY_ORDER = {"critical": 0, "warning": 1}


@dataclass
class Message:
    subject: str
    text: str
    html: str
    alerts: list[dict[str, Any]]


def _by_severity(alerts: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(alerts, key=lambda a: (SEVERITY_ORDER.get(a.get("severity", ""), 9), a.get("key", "")))


def compose(
    alerts: Sequence[Mapping[str, Any]],
    *,
    pipeline: str,
    window: str,
    report_link: str,
    links: Mapping[str, tuple[str, str]],
) -> Message:
    """One message for a run's alerts. `links`: alert key -> (report link, runbook link)."""
    ordered = _by_severity(alerts)
    critical = sum(1 for a in ordered if a.get("severity") == "critical")
    names = ", ".join(
        a["title"]
        + (f" {a['feature']}" if a.get("feature") else "")
        + (f" v{a['version']}" if a.get("version") else "")
        for a in ordered[:3]
    )
    more = f" and {len(ordered) - 3} more" if len(ordered) > 3 else ""
    subject = (
        f"[tfpipe] {pipeline} monitoring: {len(ordered)} alert{'s' if len(ordered) != 1 else ''}"
        + (f" ({critical} critical)" if critical else "")
        + f": {names}{more}"
    )
    paragraphs, items, enriched = [], [], []
    for alert in ordered:
        report, runbook = links.get(alert["key"], (report_link, alert.get("runbook", "")))
        lines = [alert["headline"], alert["sentence"]]
        if alert.get("retrain"):
            lines.append("Crossed the retraining threshold: retraining was requested.")
        lines += [f"Report: {report}", f"Runbook: {runbook}"]
        paragraphs.append("\n".join(lines))
        items.append(
            f"<li><b>{html.escape(alert['headline'])}</b><br>{html.escape(alert['sentence'])}"
            + ("<br><b>Retraining was requested.</b>" if alert.get("retrain") else "")
            + f'<br><a href="{html.escape(report, quote=True)}">report</a> · '
            f'<a href="{html.escape(runbook, quote=True)}">runbook: what to do</a></li>'
        )
        enriched.append({**alert, "report_url": report, "runbook_url": runbook})
    text = f"{pipeline} monitoring, window {window}\n\n" + "\n\n".join(paragraphs)
    body = (
        f"<p>{html.escape(pipeline)} monitoring, window {html.escape(window)}: "
        f"{len(ordered)} alert{'s' if len(ordered) != 1 else ''}.</p><ul>{''.join(items)}</ul>"
        f'<p><a href="{html.escape(report_link, quote=True)}">Monitoring report</a></p>'
    )
    return Message(subject, text, body, enriched)


def alert_notifiers(
    message: Message,
    *,
    channels: MonitoringAlertsConfig,
    alerts: AlertsConfig,
    pipeline: str,
    window: str,
    report_link: str,
) -> list[tuple[str, Any]]:
    """(channel, notifier) for each configured channel; [] when none is."""
    out: list[tuple[str, Any]] = []
    if channels.email and alerts.email:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        out.append(
            (
                "email",
                SmtpNotifier(
                    to=alerts.email,
                    from_email=alerts.from_email,
                    smtp_conn_id=alerts.smtp_conn_id,
                    subject=message.subject,
                    html_content=message.html,
                ),
            )
        )
    if channels.slack_conn_id:
        from tfpipe_airflow.notifiers.webhook import SlackWebhookNotifier

        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_slack(message.subject)}*"}},
            *(
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": f"*{_slack(a['headline'])}*\n{_slack(a['sentence'])}\n"
                        f"<{a['report_url']}|report> · <{a['runbook_url']}|runbook>",
                    },
                }
                for a in message.alerts[:40]
            ),
        ]
        out.append(
            ("slack", SlackWebhookNotifier(slack_conn_id=channels.slack_conn_id, text=message.text, blocks=blocks))
        )
    if channels.webhook_conn_id:
        from tfpipe_airflow.notifiers.webhook import WebhookNotifier

        payload = {
            "source": "tfpipe",
            "pipeline": pipeline,
            "window": window,
            "summary": message.subject,
            "report_url": report_link,
            "alerts": message.alerts,
        }
        out.append(("webhook", WebhookNotifier(webhook_conn_id=channels.webhook_conn_id, payload=payload)))
    return out


def failure_notifiers(*, channels: MonitoringAlertsConfig, alerts: AlertsConfig, pipeline: str) -> list[Any]:
    """Templated notifiers for `on_failure_callback`: a monitoring that cannot run is itself an alert."""
    subject = f"[tfpipe] {pipeline} monitoring FAILED: {{{{ ti.task_id }}}} of {{{{ run_id }}}}"
    text = (
        f"The {pipeline} monitoring task {{{{ ti.task_id }}}} of run {{{{ run_id }}}} failed: the window "
        "{{ data_interval_start }} .. {{ data_interval_end }} is not monitored until it is cleared and succeeds. "
        "Task log: {{ ti.log_url }} . Runbook: " + channels.runbook_url.split("#")[0] + "#monitoring-cannot-judge"
    )
    out: list[Any] = []
    if channels.email and alerts.email:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        out.append(
            SmtpNotifier(
                to=alerts.email,
                from_email=alerts.from_email,
                smtp_conn_id=alerts.smtp_conn_id,
                subject=subject,
                html_content=f"<p>{text}</p>",
            )
        )
    if channels.slack_conn_id:
        from tfpipe_airflow.notifiers.webhook import SlackWebhookNotifier

        out.append(SlackWebhookNotifier(slack_conn_id=channels.slack_conn_id, text=text))
    if channels.webhook_conn_id:
        from tfpipe_airflow.notifiers.webhook import WebhookNotifier

        out.append(
            WebhookNotifier(
                webhook_conn_id=channels.webhook_conn_id,
                payload={"source": "tfpipe", "pipeline": pipeline, "summary": subject, "text": text, "alerts": []},
            )
        )
    return out


def _slack(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
