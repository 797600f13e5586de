"""One quota check, the same wherever it runs (a worker's first attempt, the triggerer's polls, the CLI).

A `QuotaSpec` holds everything a check needs, as JSON (a trigger gets it as its arguments): who holds the
reservation, what it asks for, and the limits it is checked against. `attempt` asks the provider first
(real capacity, outside any ledger lock: it may be a network call), then the ledger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tfpipe.quota.ledger import Decision, QuotaLedger
from tfpipe.quota.providers import QuotaProvider, provider_shortages
from tfpipe.quota.resources import Holder


@dataclass(frozen=True)
class QuotaSpec:
    holder: Holder
    pipeline: str
    stage: str
    request: dict[str, float]
    budget: dict[str, float]
    cap: dict[str, float]
    lease_seconds: float
    window_seconds: float = 86400.0
    alert_share: float = 0.8

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "holder": self.holder.to_dict()}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> QuotaSpec:
        fields = {key: value[key] for key in cls.__dataclass_fields__ if key in value}
        fields["holder"] = Holder(**value["holder"])
        return cls(**fields)


def attempt(
    ledger: QuotaLedger, provider: QuotaProvider | None, spec: QuotaSpec, *, record_refusal: bool = True
) -> Decision:
    """Reserve the spec's request if the provider has it free and the ledger has room; else a refusal."""
    shortages = []
    provider_alerts = []
    if provider is not None:
        capacity = provider.capacity()
        shortages = provider_shortages(provider.name, capacity, spec.request)
        provider_alerts = ledger.observe_provider(
            provider.name, capacity, pipeline=spec.pipeline, alert_share=spec.alert_share
        )
    decision = ledger.reserve(
        holder=spec.holder,
        pipeline=spec.pipeline,
        stage=spec.stage,
        request=spec.request,
        budget=spec.budget,
        cap=spec.cap,
        lease_seconds=spec.lease_seconds,
        window_seconds=spec.window_seconds,
        alert_share=spec.alert_share,
        provider_shortages=shortages,
        record_refusal=record_refusal,
    )
    return dataclasses.replace(decision, alerts=decision.alerts + tuple(provider_alerts))
