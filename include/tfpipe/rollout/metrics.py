"""The model server's Prometheus metrics: parsed with prometheus_client's parser, and differenced over a window.

Counters and histograms only ever grow while the server runs, so what happened during a window is
the difference of two scrapes. A series that shrank or vanished means the server restarted in between:
that window cannot be measured (a MetricsError), which the analysis reports as Error, never as a pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

# The model server's series (see tfpipe.serving): requests by code, latency and prediction histograms.
REQUESTS = "tfpipe_serving_requests_total"
LATENCY = "tfpipe_serving_request_latency_seconds"
PREDICTIONS = "tfpipe_serving_predictions"
MODEL_ERRORS = "tfpipe_serving_model_errors_total"
TRAFFIC = "tfpipe_serving_traffic_percent"
PREFIX = "tfpipe_serving_"
# Samples that only grow; gauges (and the `_created` timestamps) are not differenced.
_MONOTONIC_SUFFIXES = ("_total", "_bucket", "_count", "_sum")

LabelSet = tuple[tuple[str, str], ...]


class MetricsError(Exception):
    """The metrics cannot be read or do not measure the window (unreachable, garbled, counters reset)."""


def _labels(labels: Mapping[str, str]) -> LabelSet:
    return tuple(sorted(labels.items()))


def _matches(labels: LabelSet, wanted: Mapping[str, str]) -> bool:
    found = dict(labels)
    return all(found.get(key) == value for key, value in wanted.items())


@dataclass(frozen=True)
class Snapshot:
    """One scrape: every sample's value by (sample name, labels). `delta` turns two into a window."""

    samples: Mapping[tuple[str, LabelSet], float] = field(default_factory=dict)
    # When each counter or histogram was created (prometheus_client's `_created` samples): a series created
    # anew between two scrapes means the server restarted, even when its count has grown past the old one.
    created: Mapping[tuple[str, LabelSet], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 when there are none)."""
        return sum(v for (n, ls), v in self.samples.items() if n == name and _matches(ls, labels))

    def values_by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Sums of the matching samples of `name`, grouped by the value of `label`."""
        grouped: dict[str, float] = {}
        for (n, ls), v in self.samples.items():
            if n == name and _matches(ls, labels):
                key = dict(ls).get(label, "")
                grouped[key] = grouped.get(key, 0.0) + v
        return grouped

    def buckets(self, histogram: str, **labels: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets [(upper bound, count), ...], ascending, +Inf last."""
        by_bound: dict[float, float] = {}
        for (n, ls), v in self.samples.items():
            if n == f"{histogram}_bucket" and _matches(ls, labels):
                bound = float(dict(ls)["le"])
                by_bound[bound] = by_bound.get(bound, 0.0) + v
        return sorted(by_bound.items())

    def has_family(self, prefix: str = PREFIX) -> bool:
        return any(name.startswith(prefix) for name, _ in self.samples)

    def delta(self, earlier: Snapshot) -> Snapshot:
        """What happened between `earlier` and this scrape, for the counters and histograms."""
        window: dict[tuple[str, LabelSet], float] = {}
        for key in earlier.samples:
            if key[0].endswith(_MONOTONIC_SUFFIXES) and key not in self.samples:
                raise MetricsError(f"the series {_describe(key)} disappeared between two scrapes: the server restarted")
        for key, after in self.samples.items():
            if not key[0].endswith(_MONOTONIC_SUFFIXES):
                continue
            before = earlier.samples.get(key, 0.0)
            if after < before:
                raise MetricsError(
                    f"the counter {_describe(key)} went down from {before:g} to {after:g}: the server restarted "
                    "during the window"
                )
            window[key] = after - before
        for key, created in earlier.created.items():
            if key in self.created and self.created[key] != created:
                raise MetricsError(
                    f"the series {_describe(key)} was created anew between two scrapes: the server restarted"
                )
        return Snapshot(window, dict(self.created))


def _describe(key: tuple[str, LabelSet]) -> str:
    name, labels = key
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def parse_metrics(text: str) -> Snapshot:
    """Parse Prometheus text exposition; MetricsError if it is garbled or holds no model-server series."""
    samples: dict[tuple[str, LabelSet], float] = {}
    created: dict[tuple[str, LabelSet], float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    created[(sample.name.removesuffix("_created"), _labels(sample.labels))] = float(sample.value)
                    continue
                key = (sample.name, _labels(sample.labels))
                samples[key] = samples.get(key, 0.0) + float(sample.value)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        first = next((line for line in text.splitlines() if line.strip()), "")[:80]
        raise MetricsError(f"the metrics are not Prometheus text ({exc}); first line: {first!r}") from None
    snapshot = Snapshot(samples, created)
    if not snapshot.has_family():
        raise MetricsError(f"the metrics hold no {PREFIX}* series: this is not the model server's /metrics")
    if any(math.isnan(value) for value in samples.values()):
        raise MetricsError("the metrics hold NaN values")
    return snapshot


def bucket_counts(cumulative: Iterable[tuple[float, float]]) -> list[float]:
    """Cumulative histogram buckets -> the count of each bucket alone."""
    counts, previous = [], 0.0
    for _, total in cumulative:
        counts.append(max(total - previous, 0.0))
        previous = max(total, previous)
    return counts


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket as Prometheus does.

    None without observations. In the +Inf bucket the answer is the largest finite bound (a lower bound
    of the truth), as in Prometheus's histogram_quantile.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    total = cumulative[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = (bound if not math.isinf(bound) else lower_bound), count
    return lower_bound
