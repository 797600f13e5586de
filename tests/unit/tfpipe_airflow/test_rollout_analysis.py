"""The canary analysis on real Prometheus text: the model server's own metrics class, fed traffic.

Each window is what the trigger measures: two scrapes of the exposition, parsed with prometheus_client's
parser and differenced. Every verdict and every reason (metric, value, limit) is checked.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from tfpipe.config import CanaryAnalysisConfig
from tfpipe.rollout import AnalysisResult, MetricsError, Verdict, analyze, histogram_quantile, js_distance
from tfpipe.rollout.metrics import parse_metrics
from tfpipe.serving.metrics import ServingMetrics

MODEL = "big_tipper"
CONFIG = CanaryAnalysisConfig(
    window_seconds=20,
    poll_seconds=5,
    min_requests=100,
    max_error_rate=0.01,
    max_p99_latency_ratio=2.0,
    p99_latency_slack_ms=5.0,
    max_prediction_drift=0.2,
)


class Traffic:
    """The server's metrics registry, and traffic to put through it."""

    def __init__(self, seed: int = 7) -> None:
        self.metrics = ServingMetrics(MODEL)
        self.random = random.Random(seed)

    def scrape(self):
        return parse_metrics(self.metrics.exposition().decode())

    def serve(
        self,
        version: str,
        role: str,
        requests: int,
        *,
        errors: int = 0,
        latency_ms: float = 2.0,
        predict=None,
    ) -> None:
        predict = predict or (lambda: self.random.betavariate(2, 5))
        for index in range(requests):
            failed = index < errors
            seconds = self.random.uniform(0.6, 1.4) * latency_ms / 1000
            self.metrics.observe_request(version, role, 500 if failed else 200, seconds)
            if failed:
                self.metrics.model_errors.labels(MODEL, version).inc()
            else:
                self.metrics.observe_predictions(version, role, [predict()])


def window(traffic: Traffic, **canary) -> tuple:
    """A window of 1,000 requests at 20% canary: stable 800 healthy, the canary as given."""
    before = traffic.scrape()
    traffic.serve("1", "stable", 800)
    traffic.serve("2", "canary", **{"requests": 200, **canary})
    return traffic.scrape().delta(before)


def judge(snapshot, config: CanaryAnalysisConfig = CONFIG, **kwargs) -> AnalysisResult:
    return analyze(snapshot, model=MODEL, canary_version="2", stable_version="1", config=config, **kwargs)


def test_a_healthy_canary_is_successful_and_every_check_says_what_it_measured():
    result = judge(window(Traffic()))

    assert result.verdict is Verdict.SUCCESSFUL, result.summary()
    text = " | ".join(result.reasons)
    assert "canary requests 200 >= min_requests 100" in text
    assert "error rate of the canary 0.00%" in text and "<= max_error_rate 1.00%" in text
    assert "p99 latency of the canary" in text and "within max_p99_latency_ratio 2" in text
    assert "prediction drift" in text and "<= max_prediction_drift 0.2" in text
    m = result.measurements
    assert m["canary_requests"] == 200 and m["stable_requests"] == 800 and m["error_rate"] == 0
    assert 0 < m["prediction_drift"] < 0.2
    assert m["stable_compared"] == "live"
    assert result.reference is not None and result.reference["version"] == "1"


def test_an_error_rate_above_the_limit_fails_and_the_reason_names_value_and_limit():
    result = judge(window(Traffic(), errors=6))

    assert result.verdict is Verdict.FAILED
    [reason] = result.reasons
    assert reason.startswith("error rate of the canary 3.00% (6 of 200 requests answered 5xx; stable: 0 of 800)")
    assert reason.endswith("is above max_error_rate 1.00%")
    assert result.measurements["canary_model_errors"] == 6


def test_an_error_rate_at_the_limit_passes():
    config = CONFIG.model_copy(update={"max_error_rate": 0.03})
    assert judge(window(Traffic(), errors=6), config).verdict is Verdict.SUCCESSFUL


def test_a_slow_canary_fails_on_p99_latency_against_stable():
    result = judge(window(Traffic(), latency_ms=40))

    assert result.verdict is Verdict.FAILED
    [reason] = result.reasons
    assert reason.startswith("p99 latency of the canary")
    assert "vs stable" in reason and "above max_p99_latency_ratio 2" in reason
    assert "more than p99_latency_slack_ms 5 ms slower" in reason
    assert result.measurements["canary_p99_ms"] > 2 * result.measurements["stable_p99_ms"]


def test_a_latency_ratio_within_the_slack_is_noise_not_a_failure():
    # Three times slower, but by about two milliseconds: below p99_latency_slack_ms.
    result = judge(window(Traffic(), latency_ms=3.0), CONFIG.model_copy(update={"max_p99_latency_ratio": 1.2}))
    assert result.verdict is Verdict.SUCCESSFUL, result.summary()
    assert result.measurements["p99_latency_ratio"] > 1.2


def test_a_canary_answering_a_constant_fails_on_prediction_drift():
    result = judge(window(Traffic(), predict=lambda: 0.73))

    assert result.verdict is Verdict.FAILED
    [reason] = result.reasons
    assert reason.startswith("prediction drift (Jensen-Shannon distance of the canary's 200 predictions against")
    assert "is above max_prediction_drift 0.2" in reason
    assert result.measurements["prediction_drift"] > 0.5


def test_several_failures_are_all_reported():
    result = judge(window(Traffic(), errors=50, predict=lambda: 0.02, latency_ms=60))
    assert result.verdict is Verdict.FAILED
    assert [reason.split(" ")[0] for reason in result.reasons] == ["error", "p99", "prediction"]


def test_too_few_canary_requests_is_inconclusive_whatever_the_figures_say():
    result = judge(window(Traffic(), requests=40, errors=10))

    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.reasons[0] == (
        "the canary (version 2) served 40 requests in the window, fewer than min_requests (100): too few to judge"
    )
    assert any(check.startswith("failed: error rate") for check in result.checks), "still logged"


def test_no_canary_traffic_at_all_is_inconclusive_not_an_error():
    traffic = Traffic()
    before = traffic.scrape()
    traffic.serve("1", "stable", 500)
    result = judge(traffic.scrape().delta(before))
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "served 0 requests" in result.reasons[0]


def test_at_100_percent_stable_is_compared_through_an_earlier_window():
    traffic = Traffic()
    earlier = judge(window(traffic))
    before = traffic.scrape()
    traffic.serve("2", "canary", 300)
    at_100 = traffic.scrape().delta(before)

    without = judge(at_100)
    assert without.verdict is Verdict.INCONCLUSIVE
    assert "the stable version 1 served 0 requests in the window" in without.reasons[0]
    assert "no earlier window measured it" in without.reasons[0]

    # The reference travels in trigger arguments and events through the metadata database, as strict JSON.
    stored = json.loads(json.dumps(earlier.reference, allow_nan=False))
    with_reference = judge(at_100, reference=stored)
    assert with_reference.verdict is Verdict.SUCCESSFUL, with_reference.summary()
    assert with_reference.measurements["stable_compared"] == "reference"
    assert "in an earlier window of this rollout" in " ".join(with_reference.reasons)

    # A reference of another stable version does not count.
    other = {**earlier.reference, "version": "9"}
    assert judge(at_100, reference=other).verdict is Verdict.INCONCLUSIVE


def test_a_constant_canary_at_100_percent_fails_against_the_reference():
    traffic = Traffic()
    earlier = judge(window(traffic))
    before = traffic.scrape()
    traffic.serve("2", "canary", 300, predict=lambda: 0.5)
    result = judge(traffic.scrape().delta(before), reference=earlier.reference)
    assert result.verdict is Verdict.FAILED and "prediction drift" in result.reasons[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<html><body>502 Bad Gateway</body></html>", "not Prometheus text"),
        ("tfpipe_serving_requests_total{code=200 garbled", "not Prometheus text"),
        ("# HELP up 1\n# TYPE up gauge\nup 1\n", "no tfpipe_serving_* series"),
        ("", "no tfpipe_serving_* series"),
    ],
)
def test_garbled_or_foreign_metrics_are_a_metrics_error(text, message):
    with pytest.raises(MetricsError, match=re.escape(message)):
        parse_metrics(text)


def test_a_server_restart_during_the_window_is_a_metrics_error():
    traffic = Traffic()
    traffic.serve("1", "stable", 100)
    before = traffic.scrape()
    restarted = Traffic()
    restarted.serve("1", "stable", 10)
    with pytest.raises(MetricsError, match="went down from 100 to 10: the server restarted"):
        restarted.scrape().delta(before)
    # Grown past the old count, the restart still shows: its series were created anew.
    restarted.serve("1", "stable", 200)
    with pytest.raises(MetricsError, match="created anew between two scrapes: the server restarted"):
        restarted.scrape().delta(before)


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.005, 90.0), (0.01, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.002)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.0095)
    assert histogram_quantile(0.99, [(0.001, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(0.001, 0.0), (0.01, 5.0), (float("inf"), 100.0)]) == 0.01


def test_js_distance_is_zero_for_the_same_shape_and_one_for_disjoint_ones():
    assert js_distance([1, 2, 3], [10, 20, 30]) == pytest.approx(0)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1)
    assert 0 < js_distance([5, 5], [6, 4]) < 0.2
    with pytest.raises(ValueError):
        js_distance([0, 0], [1, 1])


def test_a_result_survives_a_trigger_event_and_garbage_becomes_an_error():
    result = judge(window(Traffic(), errors=6))
    assert AnalysisResult.from_dict(result.to_dict()) == result
    broken = AnalysisResult.from_dict({"verdict": "Maybe"})
    assert broken.verdict is Verdict.ERROR and "no verdict" in broken.reasons[0]
