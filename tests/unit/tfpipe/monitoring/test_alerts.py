"""Alerts: what they say, since when, and the cool-down that keeps them from repeating."""

from __future__ import annotations

import datetime as dt
import re

from tests.conftest import PROJECT_ROOT
from tfpipe.monitoring.alerts import KINDS, Alert, decide, github_anchor, runbook_anchor

H = dt.timedelta(hours=1)
T0 = dt.datetime(2026, 5, 9, tzinfo=dt.UTC)


def _alert(severity="warning", value=0.4) -> Alert:
    return Alert(
        kind="drift",
        severity=severity,
        version="1",
        feature="fare",
        metric="jensen-shannon distance of `fare`",
        value=value,
        threshold=0.25,
    )


def _summary(start, alerts):
    return {
        "window": {"start": start.isoformat(), "end": (start + H).isoformat()},
        "alerts": [a.to_dict() for a in alerts],
    }


def test_an_alert_says_what_crossed_which_threshold_by_how_much_and_since_when():
    alert = decide([_alert()], [], window_start=T0, window_end=T0 + H, cooldown=4 * H)[0]
    assert alert.by == 0.4 - 0.25
    assert alert.sentence().startswith("jensen-shannon distance of `fare` is 0.4, above the threshold 0.25 by 0.15")
    assert f"since {T0.isoformat()}" in alert.sentence()
    assert alert.notify and alert.headline() == "[WARNING] Drift against the previous window (`fare` v1)"


def test_the_same_alert_is_sent_again_only_after_the_cooldown_and_keeps_its_since():
    history, sent = [], []
    for hour in range(6):
        start = T0 + hour * H
        alert = decide([_alert()], history, window_start=start, window_end=start + H, cooldown=4 * H)[0]
        assert alert.since == T0.isoformat()
        sent.append(alert.notify)
        history.append(_summary(start, [alert]))
    assert sent == [True, False, False, False, True, False]


def test_a_rise_to_critical_is_sent_at_once_and_a_gap_longer_than_the_cooldown_starts_anew():
    first = decide([_alert()], [], window_start=T0, window_end=T0 + H, cooldown=4 * H)[0]
    history = [_summary(T0, [first])]
    worse = decide([_alert("critical")], history, window_start=T0 + H, window_end=T0 + 2 * H, cooldown=4 * H)[0]
    assert worse.notify and worse.since == T0.isoformat()
    later = T0 + 10 * H
    again = decide([_alert()], history, window_start=later, window_end=later + H, cooldown=4 * H)[0]
    assert again.notify and again.since == later.isoformat()


def test_a_rerun_of_a_window_decides_the_same():
    first = decide([_alert()], [], window_start=T0, window_end=T0 + H, cooldown=4 * H)[0]
    history = [_summary(T0, [first])]
    rerun = decide([_alert()], history, window_start=T0, window_end=T0 + H, cooldown=4 * H)[0]
    assert rerun.notify and rerun.since == T0.isoformat()


def test_every_alert_kind_has_its_runbook_section():
    text = (PROJECT_ROOT / "docs" / "runbook.md").read_text()
    anchors = {github_anchor(heading) for heading in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}
    assert "monitoring-alerts" in anchors
    assert {kind for kind in KINDS if runbook_anchor(kind) not in anchors} == set()
    prometheus = (PROJECT_ROOT / "docker" / "prometheus" / "alerts.yml").read_text()
    for anchor in re.findall(r"runbook\.md#([\w-]+)", prometheus):
        assert anchor in anchors
