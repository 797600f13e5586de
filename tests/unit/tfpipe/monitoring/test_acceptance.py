"""Acceptance: held-out trips replayed through the real model server, window after window, then judged by
the `monitor` stage as the DAG runs it.

Clean traffic for several windows raises no alert; a window whose fares shifted raises skew and drift
alerts naming `fare` and asks for retraining; a window with most `trip_miles` missing raises a data-quality
alert naming it; a window without predictions after windows with traffic raises an outage alert. The late
labels of the clean windows join and give a real AUC. (The server that stops answering is in
tests/integration/test_monitoring.py, where the Airflow-side probe runs.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import pytest

from tests.unit.tfpipe.monitoring.conftest import monitoring_config, replay, wait_until
from tfpipe.stages import monitor as monitor_stage

WINDOW = 6.0  # seconds of traffic per window
RATE = 120.0


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


@pytest.fixture(scope="module")
def windows(server, trips):
    """Six contiguous windows of WINDOW seconds: clean x3, fare shifted, missing trip_miles, no traffic."""
    phases = [trips.clean, trips.clean, trips.clean, trips.fare_shifted, trips.missing_miles, None]
    start = time.time() + 1.0
    bounds = []
    for index, csv_path in enumerate(phases):
        begin, end = start + index * WINDOW, start + (index + 1) * WINDOW
        wait_until(begin)
        if csv_path is not None:
            report = replay(server.url, csv_path, seconds=WINDOW - 0.4, rate=RATE)
            assert report["failed"] == 0, report
        bounds.append((begin, end))
    wait_until(bounds[-1][1] + 1.0)  # the writer thread flushes what is queued
    return bounds


def _monitor(config, tmp_path, window, *, labels_uri=None, name="run"):
    args = argparse.Namespace(
        config=config.model_dump_json(),
        window_start=_iso(window[0]),
        window_end=_iso(window[1]),
        output_uri=str(tmp_path / name),
        probe="",
        baselines=json.dumps({"*": BASELINES}),
        state_uri="",
        request_log_dir="",
    )
    return monitor_stage.run(args)


BASELINES: dict = {}


@pytest.fixture(scope="module")
def results(windows, server, trips, model_uri, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring-acceptance")
    BASELINES.update(training_data_uri=str(trips.train), eval_uri=str(trips.eval), model_uri=model_uri)
    labels = tmp / "labels"
    labels.mkdir()
    config = monitoring_config(tmp, server.log_dir, labels={"uri": str(labels), "min_labeled": 200})
    out = []
    for index, window in enumerate(windows):
        if index == 3:
            # The clean windows' trips land with their tips before the shifted window is judged.
            (labels / "span=clean.csv").write_bytes(trips.clean.read_bytes())
        out.append(_monitor(config, tmp, window, name=f"window-{index}"))
    return out


def _kinds(result) -> set[tuple[str, str | None]]:
    return {(alert["kind"], alert["feature"]) for alert in result["alerts"]}


def test_clean_held_out_traffic_raises_no_alert_for_several_windows(results):
    for result in results[:3]:
        assert result["healthy"], [a["sentence"] for a in result["alerts"]]
        assert result["versions"] == ["1"] and result["served"] > 400
        assert not result["retrain"]


def test_a_fare_shift_raises_a_drift_alert_naming_fare_and_asks_for_retraining(results):
    shifted = results[3]
    kinds = _kinds(shifted)
    assert ("drift", "fare") in kinds and ("skew", "fare") in kinds
    assert shifted["retrain"] and any("fare" in reason for reason in shifted["retrain_reasons"])
    drift = next(a for a in shifted["alerts"] if a["kind"] == "drift" and a["feature"] == "fare")
    assert drift["value"] > drift["threshold"] and drift["by"] == pytest.approx(drift["value"] - drift["threshold"])
    assert drift["since"] == drift["window_start"] and drift["notify"]
    assert drift["runbook"].endswith("#drift-against-the-previous-window")
    assert drift["report_uri"].endswith("report.html")
    # Only fare moved: no other feature is named.
    assert {feature for kind, feature in kinds if kind in ("skew", "drift")} == {"fare"}


def test_many_missing_values_raise_a_data_quality_alert_naming_the_feature(results):
    missing = results[4]
    alert = next(a for a in missing["alerts"] if a["kind"] == "missing_values")
    assert alert["feature"] == "trip_miles" and alert["value"] > 0.5
    assert "trip_miles" in alert["sentence"] and "threshold 10.00%" in alert["sentence"]
    assert {a["feature"] for a in missing["alerts"] if a["kind"] == "missing_values"} == {"trip_miles"}


def test_no_predictions_where_traffic_is_expected_is_an_outage(results):
    quiet = results[5]
    assert ("no_predictions", None) in _kinds(quiet)


def test_late_labels_give_the_real_auc_of_the_served_trips(results):
    with open(results[3]["summary_uri"]) as handle:
        summary = json.load(handle)
    joined = [per["1"] for per in summary["labels"].values() if "1" in per]
    assert len(joined) >= 3  # the three clean windows (and the shifted one: its features differ, so it joins nothing)
    for item in joined[:3]:
        assert item["labeled"] >= 200 and item["match_share"] > 0.9
        assert 0.75 < item["auc"] <= 1.0


def test_the_report_shows_every_feature_and_the_alerts(results):
    with open(results[3]["report_uri"]) as handle:
        text = handle.read()
    assert "Drift against the previous window" in text and 'id="f-fare"' in text
    assert text.count("<svg") > 10
