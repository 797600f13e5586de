"""The deployment gate: BLESSED or NOT_BLESSED, with every reason, failing closed.

TFMA judges the thresholds (value thresholds, and change thresholds against the champion); this
module turns its validation result into a decision a person can act on and adds what TFMA does not
know about:

- nothing is blessed when no threshold is configured;
- nothing is blessed when a slice a threshold or the config requires is missing or too small;
- nothing is blessed when a champion has served before but cannot be found (a change threshold
  would otherwise be skipped silently); only the first model ever is judged on values alone;
- nothing is blessed when the candidate gives anything but a probability (NaN, infinite, outside
  [0, 1]) for any example: `invalid_predictions`, which TFMA's thresholds know nothing of;
- a slice with fewer than `min_slice_size` examples is reported, not judged (its AUC is noise), and a
  slice with one class only has no AUC: neither fails the candidate, both are listed; but when the
  evaluation data as a whole is that small or of one class, nothing is blessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tfpipe.config import HIGHER_IS_BETTER, EvaluationConfig

BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"


@dataclass(frozen=True)
class Baseline:
    """What a candidate is compared with: the serving champion, nothing (a first model), or a gap."""

    state: str  # "first_model", "champion" or "missing"
    version: str | None = None
    model_uri: str | None = None  # the champion's SavedModel folder, as TensorFlow loads it
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "version": self.version, "model_uri": self.model_uri, "reason": self.reason}


@dataclass(frozen=True)
class TfmaFailure:
    """One failed threshold as TFMA reports it, in our terms."""

    slice: str
    metric: str
    is_diff: bool
    value: float | None
    lower: float | None  # value threshold bounds, or the change threshold's absolute bound
    upper: float | None


def _value(number: float | None) -> str:
    return "missing" if number is None or math.isnan(number) else f"{number:.4f}"


def _failure(failure: TfmaFailure, slices: dict[str, dict[str, Any]]) -> dict[str, Any]:
    entry = slices.get(failure.slice, {})
    baseline = (entry.get("baseline") or {}).get(failure.metric)
    candidate = (entry.get("candidate") or {}).get(failure.metric)
    if failure.is_diff:
        higher = failure.metric in HIGHER_IS_BETTER
        bound = "max_drop" if higher else "max_rise"
        threshold = -failure.lower if higher and failure.lower is not None else failure.upper
        diff = failure.value if failure.value is not None else math.nan
        by = (-diff - threshold) if higher else (diff - threshold)
        text = (
            f"{failure.metric} on {failure.slice}: {_value(candidate)} is {abs(diff):.4f} "
            f"{'below' if diff < 0 else 'above'} the champion's {_value(baseline)}, more than the allowed "
            f"{bound.replace('_', ' ')} of {threshold:.4f} (by {by:.4f})"
        )
        return {
            "slice": failure.slice,
            "metric": failure.metric,
            "kind": "change",
            "bound": bound,
            "threshold": threshold,
            "value": candidate,
            "baseline_value": baseline,
            "by": round(by, 6) if not math.isnan(by) else None,
            "message": text,
        }
    value = failure.value
    if value is None or math.isnan(value):
        bound, threshold, by = (
            ("min", failure.lower, None) if failure.lower is not None else ("max", failure.upper, None)
        )
        text = f"{failure.metric} on {failure.slice} is missing (no value to compare with its {bound} {threshold})"
    elif failure.lower is not None and value < failure.lower:
        bound, threshold, by = "min", failure.lower, failure.lower - value
        text = f"{failure.metric} {value:.4f} on {failure.slice} is below the minimum {threshold} (by {by:.4f})"
    else:
        bound, threshold, by = "max", failure.upper, value - (failure.upper or 0.0)
        text = f"{failure.metric} {value:.4f} on {failure.slice} is above the maximum {threshold} (by {by:.4f})"
    return {
        "slice": failure.slice,
        "metric": failure.metric,
        "kind": "value",
        "bound": bound,
        "threshold": threshold,
        "value": value,
        "baseline_value": baseline,
        "by": round(by, 6) if by is not None else None,
        "message": text,
    }


def _not_judged(entry: dict[str, Any], min_slice_size: int) -> str | None:
    if entry["examples"] < min_slice_size:
        return f"{entry['examples']} examples, fewer than min_slice_size ({min_slice_size}): reported, not judged"
    mean_label = (entry.get("candidate") or {}).get("mean_label")
    if mean_label in (0.0, 1.0):
        return f"one class only (mean label {mean_label:g}): AUC is undefined, not judged"
    return None


def _invalid_predictions(overall: dict[str, Any] | None, slices: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The failure when the candidate gave anything but a probability, or when that was not checked."""
    count = ((overall or {}).get("candidate") or {}).get("invalid_predictions")
    if count == 0:
        return None
    baseline = ((overall or {}).get("baseline") or {}).get("invalid_predictions")
    found = {
        "slice": "Overall",
        "metric": "invalid_predictions",
        "kind": "value",
        "bound": "max",
        "threshold": 0,
        "value": count,
        "baseline_value": baseline,
        "by": count,
    }
    if count is None:
        found["message"] = "the candidate's predictions were not checked (no invalid_predictions overall)"
        return found
    examples = overall["examples"] if overall else 0
    where = ""
    if count < examples:  # say where they are, so the cause can be found: the slices with the most
        worst = sorted(
            (
                entry
                for entry in slices
                if len(entry["features"]) == 1 and (entry.get("candidate") or {}).get("invalid_predictions")
            ),
            key=lambda entry: -entry["candidate"]["invalid_predictions"],
        )[:3]
        where = ", most on " + ", ".join(
            f"{entry['slice']} ({entry['candidate']['invalid_predictions']:,.0f} of {entry['examples']:,})"
            for entry in worst
        )
    found["message"] = (
        f"the candidate's prediction is not a probability (NaN, infinite or outside [0, 1]) for "
        f"{count:,.0f} of {examples:,} examples{where}"
    )
    return found


def decide(
    *,
    config: EvaluationConfig,
    slices: list[dict[str, Any]],
    baseline: Baseline,
    tfma_failures: list[TfmaFailure],
    tfma_missing_slices: list[str],
    tfma_missing_thresholds: bool,
) -> dict[str, Any]:
    """The blessing: decision, reasons, failures, slices not judged, and the baseline it was judged against."""
    by_name = {entry["slice"]: entry for entry in slices}
    reasons: list[str] = []
    failures: list[dict[str, Any]] = []
    not_judged: list[dict[str, Any]] = []
    for entry in slices:
        why = _not_judged(entry, config.min_slice_size)
        entry["judged"] = why is None
        if why is not None:
            not_judged.append({"slice": entry["slice"], "examples": entry["examples"], "reason": why})

    overall = next((entry for entry in slices if not entry["features"]), None)
    if overall is None:
        reasons.append("the evaluation data has no examples")
    elif (why := _not_judged(overall, config.min_slice_size)) is not None:
        # Every overall threshold would be skipped, and most slices' with it: nothing to bless on.
        reasons.append(f"the evaluation data as a whole cannot be judged: {why}")
    invalid = _invalid_predictions(overall, slices)
    if invalid is not None:
        reasons.append(invalid.pop("message"))
        failures.append(invalid)
    configured = config.thresholds.count()
    if configured == 0 or tfma_missing_thresholds:
        reasons.append("no thresholds are configured (evaluation.thresholds): nothing is blessed without them")
    if baseline.state == "missing":
        reasons.append(f"the champion to compare with is missing: {baseline.reason}")
    for name in config.required_slices:
        entry = by_name.get(name)
        if entry is None:
            reasons.append(f"required slice {name} has no examples in the evaluation data")
        elif entry["examples"] < config.min_slice_size:
            reasons.append(
                f"required slice {name} has {entry['examples']} examples, "
                f"fewer than min_slice_size ({config.min_slice_size})"
            )
    for spec in tfma_missing_slices:
        reasons.append(f"a threshold needs slice {spec}, which has no examples in the evaluation data")
    for failure in tfma_failures:
        entry = by_name.get(failure.slice)
        if entry is not None and not entry["judged"]:
            continue  # listed under not_judged
        found = _failure(failure, by_name)
        failures.append(found)
        reasons.append(found.pop("message"))

    blessed = not reasons
    return {
        "decision": BLESSED if blessed else NOT_BLESSED,
        "blessed": blessed,
        "reasons": reasons,
        "failures": failures,
        "not_judged": not_judged,
        "baseline": baseline.to_dict(),
        "thresholds_configured": configured,
    }
