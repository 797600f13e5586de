"""Callables of the DAGs' short-circuit gates: small decisions on upstream results, logged for on-call."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def training_window_is_complete(trainable: bool, reason: str = "") -> bool:
    """Whether the split found history for every split; when not, training is skipped, and the log says why."""
    if not trainable:
        log.warning("training is skipped for this run: %s", reason or "the split stage found no training window")
    return bool(trainable)


def candidate_is_blessed(blessed: bool, reasons: list[str] | None = None, report_uri: str = "") -> bool:
    """Whether the evaluation blessed the candidate; when not, deployment is skipped and the log says why."""
    if not blessed:
        log.warning("NOT BLESSED: this run deploys nothing. Reasons:")
        for reason in reasons or ["the evaluation gave no reason"]:
            log.warning("  - %s", reason)
        if report_uri:
            log.warning("evaluation report: %s", report_uri)
    return bool(blessed)
