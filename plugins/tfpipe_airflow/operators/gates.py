"""Callables of the DAGs' short-circuit gates: small decisions on upstream results, logged for on-call."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def training_window_is_complete(trainable: bool, reason: str = "") -> bool:
    """Whether the split found history for every split; when not, training is skipped, and the log says why."""
    if not trainable:
        log.warning("training is skipped for this run: %s", reason or "the split stage found no training window")
    return bool(trainable)
