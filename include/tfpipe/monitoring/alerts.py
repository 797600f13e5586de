"""Alerts: what crossed which threshold, by how much, since when, and whether to tell someone now.

Every check of a window yields Alerts; a healthy window yields none. Each alert has a stable `key`
(kind, version, feature) so the same problem in the next window is recognised as the same alert.

Deduplication needs no state of its own: each window's summary (tfpipe.monitoring.state) lists its
alerts with `since` and `last_notified`, and this window's decision is a pure function of the summaries
of the windows before it. So a rerun of a window decides the same, and backfills decide by window time,
not by the clock:

- `since`: the start of the streak the alert belongs to. A streak goes on while the alert was present
  at most `cooldown` before; an alert that went away for longer starts a new streak.
- notify when the streak is new, when `cooldown` has passed since it was last notified, or when it
  became critical; otherwise it is shown in the report and the task log only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

Severity = Literal["critical", "warning"]

# kind -> (title, runbook section heading). The heading is the section under "## Monitoring alerts" in
# docs/runbook.md; its anchor is computed as GitHub computes it (a test checks each one exists).
KINDS: dict[str, tuple[str, str]] = {
    "skew": ("Training/serving skew", "Training/serving skew"),
    "drift": ("Drift against the previous window", "Drift against the previous window"),
    "prediction_drift": ("Prediction drift", "Prediction drift"),
    "positive_share": ("Share of trips predicted big tippers changed", "Quality proxy: predicted big tippers"),
    "auc": ("AUC on labelled trips", "AUC on labelled trips"),
    "missing_values": ("Missing values", "Missing, corrupted or out-of-domain values"),
    "out_of_domain": ("Out-of-domain values", "Missing, corrupted or out-of-domain values"),
    "corrupted_values": ("Corrupted values", "Missing, corrupted or out-of-domain values"),
    "rejected_requests": ("Requests refused as malformed", "Missing, corrupted or out-of-domain values"),
    "latency_p50": ("Median latency", "Latency"),
    "latency_p99": ("99th percentile latency", "Latency"),
    "error_rate": ("Error rate", "Error rate"),
    "server_unreachable": ("Model server not answering", "Outage: the model server does not answer"),
    "server_not_ready": ("Model server not ready", "Outage: the model server does not answer"),
    "no_predictions": ("No predictions served", "Outage: no predictions where traffic is expected"),
    "prediction_gap": ("Predictions stopped for a while", "Outage: no predictions where traffic is expected"),
    "training_duration": ("Training took longer than usual", "Training pipeline health"),
    "training_failures": ("Training runs failed", "Training pipeline health"),
    "quota_usage": ("Compute quota nearly used up", "Training pipeline health"),
    "monitoring_blind": ("Monitoring could not judge", "Monitoring cannot judge"),
}
RUNBOOK_SECTION = "Monitoring alerts"


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchor(kind: str) -> str:
    return github_anchor(KINDS[kind][1])


@dataclasses.dataclass
class Alert:
    kind: str
    severity: Severity
    metric: str  # what was measured, in words: "Jensen-Shannon divergence of fare from the training data"
    value: float | None
    threshold: float | None
    direction: Literal["above", "below", "state"] = "above"  # which side of the threshold is bad
    version: str | None = None
    feature: str | None = None
    unit: str = ""
    detail: str = ""  # one more sentence: what it was compared with, how many rows
    retrain: bool = False  # crossing this asks for retraining
    window_start: str = ""
    window_end: str = ""
    since: str = ""
    notify: bool = False
    last_notified: str | None = None
    runbook: str = ""
    report_uri: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown alert kind {self.kind!r}")

    @property
    def key(self) -> str:
        return "|".join([self.kind, self.version or "*", self.feature or "*"])

    @property
    def title(self) -> str:
        return KINDS[self.kind][0]

    @property
    def by(self) -> float | None:
        """How far past the threshold (positive = worse), in the value's unit."""
        if self.value is None or self.threshold is None or self.direction == "state":
            return None
        return self.value - self.threshold if self.direction == "above" else self.threshold - self.value

    def _number(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if self.unit == "%":
            return f"{100 * value:.2f}%"
        text = f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return text + (f" {self.unit}" if self.unit else "")

    def headline(self) -> str:
        subject = " ".join(
            part for part in (self.feature and f"`{self.feature}`", self.version and f"v{self.version}") if part
        )
        head = f"[{self.severity.upper()}] {self.title}" + (f" ({subject})" if subject else "")
        return head

    def sentence(self) -> str:
        """What crossed which threshold, by how much, since when."""
        if self.direction == "state":
            core = f"{self.metric}"
        else:
            core = (
                f"{self.metric} is {self._number(self.value)}, {self.direction} the threshold "
                f"{self._number(self.threshold)} by {self._number(self.by)}"
            )
        since = f"; since {self.since}" if self.since else ""
        return core + since + (f". {self.detail}" if self.detail else ".")

    def text(self, report_link: str = "", runbook_link: str = "") -> str:
        lines = [self.headline(), self.sentence()]
        lines.append(f"Window: {self.window_start} .. {self.window_end}")
        if self.retrain:
            lines.append("Crossed the retraining threshold: retraining was requested.")
        if report_link or self.report_uri:
            lines.append(f"Report: {report_link or self.report_uri}")
        if runbook_link or self.runbook:
            lines.append(f"Runbook: {runbook_link or self.runbook}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(key=self.key, title=self.title, by=self.by, headline=self.headline(), sentence=self.sentence())
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def _time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def decide(
    alerts: list[Alert],
    history: Iterable[Mapping[str, Any]],
    *,
    window_start: dt.datetime,
    window_end: dt.datetime,
    cooldown: dt.timedelta,
) -> list[Alert]:
    """Set `since`, `notify` and `last_notified` of this window's alerts from the earlier windows' summaries.

    `history`: summaries of earlier windows (each {"window": {"start", "end"}, "alerts": [alert dicts]}).
    """
    latest: dict[str, tuple[dt.datetime, Mapping[str, Any]]] = {}
    for summary in history:
        end = _time(summary["window"]["end"])
        if end > window_start:
            continue  # not before this window (a later window, or this one again)
        for entry in summary.get("alerts", []):
            key = entry.get("key")
            if key and (key not in latest or latest[key][0] < end):
                latest[key] = (end, entry)
    for alert in alerts:
        alert.window_start, alert.window_end = window_start.isoformat(), window_end.isoformat()
        previous = latest.get(alert.key)
        ongoing = previous is not None and window_start - previous[0] <= cooldown
        if not ongoing:
            alert.since = window_start.isoformat()
            alert.notify = True
        else:
            assert previous is not None
            entry = previous[1]
            alert.since = entry.get("since") or entry.get("window_start") or window_start.isoformat()
            last = entry.get("last_notified")
            escalated = alert.severity == "critical" and entry.get("severity") != "critical"
            alert.notify = escalated or last is None or window_end - _time(last) >= cooldown
            if not alert.notify:
                alert.last_notified = last
        if alert.notify:
            alert.last_notified = window_end.isoformat()
    return alerts
