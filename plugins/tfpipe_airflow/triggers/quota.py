"""QuotaAvailableTrigger: wait in the triggerer, holding no worker slot, until a quota request fits.

The check operator defers to it when its request is refused and the task's behaviour is `defer`. Every
`poll_seconds` it runs the same check as the operator (provider, then ledger, in a worker thread: the
ledger's database driver and the provider's API client block) and reserves as soon as the request fits,
so the room that frees up is taken by the waiting task and not by whoever asks next. A retry of a poll
after a triggerer restart finds its own reservation (same holder key) and reuses it.

It never raises: a reservation, a timeout or repeated errors are each one event, and the operator's
`execute_complete` decides (a timeout fails the task with what was asked, what is free and who holds it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from tfpipe.quota.service import QuotaSpec, attempt

# Consecutive failed polls (database or provider unreachable) before the trigger gives up with an error.
MAX_CONSECUTIVE_ERRORS = 5


class QuotaAvailableTrigger(BaseTrigger):
    """Poll until `spec` can be reserved or `deadline` (Unix seconds) passes.

    :param spec: tfpipe.quota.service.QuotaSpec as a dict.
    :param quota: the pipeline's `quota` config (QuotaConfig) as a dict: the ledger's connection, the provider.
    :param deadline: when to stop waiting, in Unix seconds.
    :param poll_seconds: how long to wait between attempts.
    """

    def __init__(self, *, spec: dict[str, Any], quota: dict[str, Any], deadline: float, poll_seconds: float) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.quota = dict(quota)
        self.deadline = float(deadline)
        self.poll_seconds = float(poll_seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"spec": self.spec, "quota": self.quota, "deadline": self.deadline, "poll_seconds": self.poll_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from tfpipe.config import QuotaConfig
        from tfpipe_airflow.hooks.quota import QuotaLedgerHook, provider_for

        spec = QuotaSpec.from_dict(self.spec)
        errors: list[str] = []
        last_message = ""
        polls = 0
        while True:
            polls += 1
            try:
                quota = QuotaConfig.model_validate(self.quota)
                ledger = await QuotaLedgerHook.from_config(quota).aget_ledger()
                provider = provider_for(quota)
                decision = await asyncio.to_thread(attempt, ledger, provider, spec, record_refusal=False)
            except asyncio.CancelledError:
                raise  # the task was cleared, marked or killed: nothing to report
            except Exception as exc:  # never raise: an outage is reported as such, not as a refusal
                errors.append(f"{type(exc).__name__}: {exc}")
                self.log.warning("quota poll %d failed: %s", polls, errors[-1])
                if len(errors) >= MAX_CONSECUTIVE_ERRORS:
                    yield TriggerEvent({"status": "error", "message": "; ".join(errors[-3:]), "polls": polls})
                    return
            else:
                errors.clear()
                if decision.granted:
                    self.log.info("quota reserved after %d polls: %s", polls, decision.reservation)
                    yield TriggerEvent({"status": "reserved", "decision": decision.to_dict(), "polls": polls})
                    return
                assert decision.refusal is not None
                last_message = decision.refusal.message()
                self.log.info("quota still refused (poll %d):\n%s", polls, last_message)
            remaining = self.deadline - time.time()
            if remaining <= 0:
                yield TriggerEvent({"status": "timeout", "message": last_message or "; ".join(errors), "polls": polls})
                return
            await asyncio.sleep(min(self.poll_seconds, remaining))
