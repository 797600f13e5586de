"""Callables of the DAGs' short-circuit gates: small decisions on upstream results, logged for on-call."""

from __future__ import annotations

import logging
from html import escape
from typing import Any

log = logging.getLogger(__name__)


def training_window_is_complete(trainable: bool, reason: str = "") -> bool:
    """Whether the split found history for every split; when not, training is skipped, and the log says why."""
    if not trainable:
        log.warning("training is skipped for this run: %s", reason or "the split stage found no training window")
    return bool(trainable)


def candidate_is_blessed(
    blessed: bool,
    reasons: list[str] | None = None,
    report_uri: str = "",
    alert_email: list[str] | None = None,
    smtp_conn_id: str = "smtp_default",
    from_email: str = "tfpipe@localhost",
    **context: Any,
) -> bool:
    """Whether the evaluation blessed the candidate. When not: deployment is skipped, the log says why,
    and the alert recipients get the reasons by e-mail (Airflow's SMTP notifier)."""
    if blessed:
        return True
    reasons = list(reasons or ["the evaluation gave no reason"])
    log.warning("NOT BLESSED: this run deploys nothing. Reasons:")
    for reason in reasons:
        log.warning("  - %s", reason)
    if report_uri:
        log.warning("evaluation report: %s", report_uri)
    if alert_email:
        _send_not_blessed(reasons, report_uri, alert_email, smtp_conn_id, from_email, context)
    return False


def _send_not_blessed(
    reasons: list[str], report_uri: str, to: list[str], smtp_conn_id: str, from_email: str, context: Any
) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    dag_run = context.get("dag_run")
    run = getattr(dag_run, "run_id", None) or context.get("run_id", "")
    dag_id = getattr(context.get("dag"), "dag_id", None) or "the pipeline"
    items = "".join(f"<li>{escape(reason)}</li>" for reason in reasons)
    notifier = SmtpNotifier(
        from_email=from_email,
        to=to,
        smtp_conn_id=smtp_conn_id,
        subject=f"[tfpipe] {dag_id} {run}: candidate NOT BLESSED, nothing deployed",
        html_content=(
            f"<p>The candidate model of <b>{escape(dag_id)}</b> run <b>{escape(run)}</b> was not blessed; "
            f"the champion keeps serving.</p><ul>{items}</ul>"
            + (f"<p>Evaluation report: {escape(report_uri)}</p>" if report_uri else "")
        ),
    )
    try:
        # Called directly, not as a callback: the message is ours, so it is not rendered as a template.
        notifier.notify(context)
    except Exception:  # a mail server down must not hide the decision: the run still says NOT BLESSED
        log.exception("could not send the NOT BLESSED e-mail to %s through connection %s", to, smtp_conn_id)
    else:
        log.info("NOT BLESSED e-mail sent to %s", ", ".join(to))
