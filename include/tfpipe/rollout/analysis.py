"""One canary analysis over a window of live traffic: the canary against the stable model.

Checks, each with its own limit from `rollout.analysis` (CanaryAnalysisConfig):

- enough traffic: fewer canary requests than `min_requests` make every figure noise: Inconclusive;
- error rate: the canary's share of 5xx answers, above `max_error_rate`: Failed;
- p99 latency: the canary's p99 over the stable model's, above `max_p99_latency_ratio` and slower by more
  than `p99_latency_slack_ms` (sub-millisecond noise is never a failure): Failed;
- prediction drift: the Jensen-Shannon distance (base 2, so 0..1) of the canary's prediction histogram
  against the stable model's, less the distance sampling noise alone gives at these counts, above
  `max_prediction_drift`: Failed. A model that answers a constant fails it.

When the stable model served too little in the window to compare with (the last step sends it nothing),
its histograms from an earlier window of the same rollout stand in (`reference`); without one, the
comparison cannot be made and the analysis is Inconclusive, never Successful (gates fail closed).
Metrics that cannot be read are Error, counted apart from Failed: an outage is not a model failure.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tfpipe.config import CanaryAnalysisConfig
from tfpipe.rollout.metrics import LATENCY, MODEL_ERRORS, PREDICTIONS, REQUESTS, Snapshot, bucket_counts
from tfpipe.rollout.metrics import histogram_quantile as quantile


class Verdict(enum.StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


@dataclass(frozen=True)
class AnalysisResult:
    """A verdict, the reasons for it (each naming metric, value and limit), and what was measured.

    `checks` lists every check's outcome, passed ones too, for the task log. `reference` holds the stable
    model's histograms of this window, for a later analysis in which the stable model gets no traffic.
    """

    verdict: Verdict
    reasons: list[str]
    checks: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None

    @classmethod
    def error(cls, reason: str, **measurements: Any) -> AnalysisResult:
        return cls(Verdict.ERROR, [reason], [f"error: {reason}"], dict(measurements))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable (a trigger event payload, an XCom)."""
        return {
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "checks": list(self.checks),
            "measurements": dict(self.measurements),
            "reference": self.reference,
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> AnalysisResult:
        """The inverse of to_dict; a payload that is not one becomes an Error result that says so."""
        try:
            verdict = Verdict(payload["verdict"])
            reasons = [str(reason) for reason in payload.get("reasons") or []]
        except (KeyError, ValueError, TypeError):
            return cls.error(f"the analysis returned no verdict: {str(dict(payload))[:200]}")
        return cls(
            verdict,
            reasons,
            [str(check) for check in payload.get("checks") or []],
            dict(payload.get("measurements") or {}),
            payload.get("reference"),
        )

    def summary(self) -> str:
        return f"{self.verdict.value}: " + "; ".join(self.reasons or self.checks or ["no reason given"])


def _js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    if len(p) != len(q):
        raise ValueError(f"histograms of different buckets ({len(p)} vs {len(q)})")
    p_total, q_total = sum(p), sum(q)
    if p_total <= 0 or q_total <= 0:
        raise ValueError("an empty histogram has no distribution")
    divergence = 0.0
    for a, b in zip(p, q, strict=True):
        a, b = a / p_total, b / q_total
        m = (a + b) / 2
        if a > 0:
            divergence += 0.5 * a * math.log2(a / m)
        if b > 0:
            divergence += 0.5 * b * math.log2(b / m)
    return max(0.0, min(1.0, divergence))


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance (square root of the divergence, base 2: 0 same, 1 disjoint) of two histograms."""
    return math.sqrt(_js_divergence(p, q))


def drift_distance(p: Sequence[float], q: Sequence[float]) -> tuple[float, float]:
    """(corrected, raw) Jensen-Shannon distance of two histograms of counts.

    Two samples of one distribution are never identical: with m occupied buckets the plug-in divergence
    of samples of n and k values is (m - 1) / (8 ln 2) * (1/n + 1/k) on average (Miller-Madow). At the
    hundred-odd canary requests of a short window that alone is a distance of about 0.15-0.2, the size of
    a real shift, so the expected noise is subtracted before the distance is judged.
    """
    divergence = _js_divergence(p, q)
    occupied = sum(1 for a, b in zip(p, q, strict=True) if a > 0 or b > 0)
    noise = (occupied - 1) / (8 * math.log(2)) * (1 / sum(p) + 1 / sum(q))
    return math.sqrt(max(0.0, divergence - noise)), math.sqrt(divergence)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


@dataclass
class _Side:
    """One version's traffic in the window."""

    requests: float
    errors: float
    latency: list[tuple[float, float]]
    predictions: list[tuple[float, float]]

    @classmethod
    def of(cls, window: Snapshot, **labels: str) -> _Side:
        codes = window.values_by(REQUESTS, "code", **labels)
        return cls(
            requests=sum(codes.values()),
            errors=sum(count for code, count in codes.items() if code.startswith("5")),
            latency=window.buckets(LATENCY, **labels),
            predictions=window.buckets(PREDICTIONS, **labels),
        )


def _json_bound(bound: float) -> float | str:
    # The reference travels through the metadata database as JSON, which has no Infinity: the +Inf bucket
    # would come back as null. float("+Inf") reads it back.
    return "+Inf" if math.isinf(bound) else bound


def _from_reference(reference: Mapping[str, Any] | None, stable_version: str) -> _Side | None:
    if not reference or str(reference.get("version")) != str(stable_version):
        return None
    try:
        return _Side(
            requests=float(reference["requests"]),
            errors=0.0,
            latency=[(float(b), float(c)) for b, c in reference["latency"]],
            predictions=[(float(b), float(c)) for b, c in reference["predictions"]],
        )
    except (KeyError, TypeError, ValueError):
        return None


def analyze(
    window: Snapshot,
    *,
    model: str,
    canary_version: str,
    stable_version: str,
    config: CanaryAnalysisConfig,
    reference: Mapping[str, Any] | None = None,
    window_seconds: float | None = None,
) -> AnalysisResult:
    """Judge one window (the difference of two scrapes) of the canary against the stable model."""
    canary = _Side.of(window, model=model, version=str(canary_version), role="canary")
    live_stable = _Side.of(window, model=model, version=str(stable_version), role="stable")
    measurements: dict[str, Any] = {
        "canary_version": str(canary_version),
        "stable_version": str(stable_version),
        "canary_requests": int(canary.requests),
        "canary_errors": int(canary.errors),
        "stable_requests": int(live_stable.requests),
        "stable_errors": int(live_stable.errors),
        "canary_model_errors": int(window.value(MODEL_ERRORS, model=model, version=str(canary_version))),
    }
    if window_seconds is not None:
        measurements["window_seconds"] = round(window_seconds, 3)
    failed: list[str] = []
    unsure: list[str] = []
    passed: list[str] = []

    stable: _Side | None = live_stable
    stable_source = "in this window"
    if live_stable.requests < config.min_requests:
        stable = _from_reference(reference, stable_version)
        stable_source = "in an earlier window of this rollout"
        if stable is None:
            unsure.append(
                f"the stable version {stable_version} served {int(live_stable.requests)} requests in the window, "
                f"fewer than min_requests ({config.min_requests}), and no earlier window measured it: "
                "latency and predictions cannot be compared"
            )
    measurements["stable_compared"] = "none" if stable is None else ("live" if stable is live_stable else "reference")

    if canary.requests < config.min_requests:
        unsure.insert(
            0,
            f"the canary (version {canary_version}) served {int(canary.requests)} requests in the window, "
            f"fewer than min_requests ({config.min_requests}): too few to judge",
        )
    else:
        passed.append(f"canary requests {int(canary.requests)} >= min_requests {config.min_requests}")

    if canary.requests > 0:
        rate = canary.errors / canary.requests
        measurements["error_rate"] = round(rate, 6)
        text = (
            f"error rate of the canary {rate:.2%} ({int(canary.errors)} of {int(canary.requests)} requests "
            f"answered 5xx; stable: {int(live_stable.errors)} of {int(live_stable.requests)})"
        )
        if rate > config.max_error_rate:
            failed.append(f"{text} is above max_error_rate {config.max_error_rate:.2%}")
        else:
            passed.append(f"{text} <= max_error_rate {config.max_error_rate:.2%}")

    canary_p99 = quantile(0.99, canary.latency)
    stable_p99 = quantile(0.99, stable.latency) if stable is not None else None
    if canary_p99 is not None:
        measurements["canary_p99_ms"] = round(canary_p99 * 1000, 3)
    if stable_p99 is not None:
        measurements["stable_p99_ms"] = round(stable_p99 * 1000, 3)
    if canary_p99 is None:
        if canary.requests > 0:
            unsure.append("the canary has no latency observations in the window: p99 latency cannot be compared")
    elif stable_p99 is not None:
        ratio = canary_p99 / stable_p99 if stable_p99 > 0 else math.inf
        measurements["p99_latency_ratio"] = round(ratio, 4) if math.isfinite(ratio) else None
        slower_ms = (canary_p99 - stable_p99) * 1000
        text = (
            f"p99 latency of the canary {_ms(canary_p99)} vs stable {_ms(stable_p99)} ({stable_source}): "
            f"{ratio:.2f}x, {slower_ms:+.2f} ms"
        )
        if ratio > config.max_p99_latency_ratio and slower_ms > config.p99_latency_slack_ms:
            failed.append(
                f"{text} is above max_p99_latency_ratio {config.max_p99_latency_ratio:g} "
                f"and more than p99_latency_slack_ms {config.p99_latency_slack_ms:g} ms slower"
            )
        else:
            passed.append(
                f"{text} within max_p99_latency_ratio {config.max_p99_latency_ratio:g} "
                f"(or p99_latency_slack_ms {config.p99_latency_slack_ms:g} ms)"
            )

    canary_counts = bucket_counts(canary.predictions)
    if stable is not None and canary.requests > 0:
        stable_counts = bucket_counts(stable.predictions)
        bounds_match = [b for b, _ in canary.predictions] == [b for b, _ in stable.predictions]
        if sum(canary_counts) <= 0:
            if not failed:
                unsure.append("the canary made no predictions in the window: prediction drift cannot be measured")
        elif sum(stable_counts) <= 0 or not bounds_match:
            unsure.append(
                "the stable version's prediction histogram is empty or bucketed differently: "
                "prediction drift cannot be measured"
            )
        else:
            drift, raw = drift_distance(canary_counts, stable_counts)
            measurements["prediction_drift"] = round(drift, 4)
            measurements["prediction_drift_raw"] = round(raw, 4)
            text = (
                f"prediction drift (Jensen-Shannon distance of the canary's {int(sum(canary_counts))} predictions "
                f"against stable's {int(sum(stable_counts))} {stable_source}, less sampling noise) {drift:.3f} "
                f"(raw {raw:.3f})"
            )
            if drift > config.max_prediction_drift:
                failed.append(f"{text} is above max_prediction_drift {config.max_prediction_drift:g}")
            else:
                passed.append(f"{text} <= max_prediction_drift {config.max_prediction_drift:g}")

    reference_out = None
    if live_stable.requests >= config.min_requests and live_stable.latency and live_stable.predictions:
        reference_out = {
            "version": str(stable_version),
            "requests": live_stable.requests,
            "latency": [[_json_bound(bound), count] for bound, count in live_stable.latency],
            "predictions": [[_json_bound(bound), count] for bound, count in live_stable.predictions],
        }
    checks = [f"failed: {r}" for r in failed] + [f"inconclusive: {r}" for r in unsure] + [f"ok: {r}" for r in passed]
    if canary.requests < config.min_requests:
        # Too little traffic: the figures are noise, whatever they say; what they say is still logged.
        return AnalysisResult(Verdict.INCONCLUSIVE, unsure, checks, measurements, reference_out)
    if failed:
        return AnalysisResult(Verdict.FAILED, failed, checks, measurements, reference_out)
    if unsure:
        return AnalysisResult(Verdict.INCONCLUSIVE, unsure, checks, measurements, reference_out)
    return AnalysisResult(Verdict.SUCCESSFUL, passed, checks, measurements, reference_out)
