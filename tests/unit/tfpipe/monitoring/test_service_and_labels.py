"""The probe's metrics made compact and differenced; late labels joined by trip fingerprint."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tfpipe.monitoring import labels, service
from tfpipe.monitoring.statistics import jensen_shannon

METRICS = """
# TYPE tfpipe_serving_requests_total counter
tfpipe_serving_requests_total{model="big_tipper",version="1",role="stable",code="200"} %(ok)s
tfpipe_serving_requests_total{model="big_tipper",version="1",role="stable",code="500"} %(bad)s
tfpipe_serving_requests_total{model="big_tipper",version="",role="",code="400"} %(refused)s
# TYPE tfpipe_serving_request_latency_seconds histogram
tfpipe_serving_request_latency_seconds_bucket{model="big_tipper",version="1",role="stable",le="0.001"} %(fast)s
tfpipe_serving_request_latency_seconds_bucket{model="big_tipper",version="1",role="stable",le="0.01"} %(all)s
tfpipe_serving_request_latency_seconds_bucket{model="big_tipper",version="1",role="stable",le="+Inf"} %(all)s
tfpipe_serving_request_latency_seconds_count{model="big_tipper",version="1",role="stable"} %(all)s
tfpipe_serving_request_latency_seconds_sum{model="big_tipper",version="1",role="stable"} 1.0
# TYPE tfpipe_serving_model_loaded gauge
tfpipe_serving_model_loaded{model="big_tipper",version="1"} 1.0
"""


def _scrape(ok, bad, refused, fast):
    return service.summarize_metrics(
        METRICS % {"ok": ok, "bad": bad, "refused": refused, "fast": fast, "all": ok + bad}, "big_tipper"
    )


def test_two_scrapes_give_the_windows_requests_errors_refusals_and_latency():
    before, after = _scrape(1000, 0, 0, 1000), _scrape(1900, 100, 50, 1500)
    assert after["loaded"] == ["1"]
    delta = service.window_delta(after, before)
    version = delta["versions"]["1"]
    assert version["requests"] == 1000 and version["error_rate"] == pytest.approx(0.1)
    assert delta["refused_share"] == pytest.approx(50 / 1050)
    assert version["p50_ms"] == pytest.approx(1.0) and 1.0 < version["p99_ms"] <= 10.0


def test_a_restarted_server_counts_from_zero():
    delta = service.window_delta(_scrape(100, 0, 0, 100), _scrape(5000, 0, 0, 5000))
    assert delta["versions"]["1"]["requests"] == 100


def test_histogram_quantile_interpolates_like_prometheus():
    assert service.histogram_quantile(0.5, {"0.1": 50, "0.2": 100, "+Inf": 100}) == pytest.approx(0.1)
    assert service.histogram_quantile(0.75, {"0.1": 50, "0.2": 100, "+Inf": 100}) == pytest.approx(0.15)
    assert math.isnan(service.histogram_quantile(0.5, {}))


def test_served_trips_join_their_labels_by_feature_fingerprint(tmp_path):
    types = {"fare": 3, "trip_seconds": 2, "company": 1}
    trips = pd.DataFrame(
        {
            "fare": [12.45, 7.0, None, 30.1],
            "trip_seconds": [300, None, 60, 900],
            "company": ["Flash Cab", None, "Yellow", "Flash Cab"],
            "big_tipper": [1, 0, 0, 1],
        }
    )
    trips.to_csv(tmp_path / "span.csv", index=False)
    # As the server logged them: float32 values, -1 and "" for missing, then read back as nulls.
    served = {
        "fare": pd.Series([float(np.float32(12.45)), 7.0, None, float(np.float32(30.1)), 99.0]),
        "trip_seconds": pd.Series([300, None, 60, 900, 1]),
        "company": pd.Series(["Flash Cab", None, "Yellow", "Flash Cab", "Other"]),
    }
    keys = labels.fingerprints(served, types)
    table, info = labels.labelled_trips(str(tmp_path), ["company", "fare", "trip_seconds"], types, "big_tipper")
    assert info["rows"] == 4 and len(table) == 4
    predictions = np.array([0.9, 0.2, 0.3, 0.7, 0.5])
    joined = labels.join_window(keys, predictions, np.zeros(5, dtype=int), ["1"], table)
    assert joined["1"]["labeled"] == 4 and joined["1"]["served"] == 5
    assert joined["1"]["auc"] == 1.0


def test_auc_and_jensen_shannon():
    assert labels.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert labels.auc(np.array([1, 1]), np.array([0.1, 0.2])) is None
    assert jensen_shannon([1, 0], [1, 0]) == 0.0 and jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
