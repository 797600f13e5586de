"""TFDV statistics of a window's served features, and the distances TFDV's comparators measure.

The window's instances become the Arrow record batches TFDV computes statistics on (one list value per
row, a missing value a null list, as tfpipe.validation.csv_batches makes them from CSV), computed in
memory: on the sampled rows of a window this takes a second or two (1M rows x 14 features: 1.7 s of CPU,
measured). Skew (against the version's training split) and drift (against the previous window) are then
measured by `tfdv.validate_statistics` with the schema's comparators set from `monitoring.skew` and
`monitoring.drift`: Jensen-Shannon divergence for numeric features, L-infinity distance for categorical
ones, exactly as the validation stage compares spans.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from tfpipe.config import MonitoredComparison
from tfpipe.validation.tfdv_checks import stats_options, with_comparators

BYTES = schema_pb2.BYTES
MEASUREMENTS = {1: "l_infinity", 2: "jensen_shannon", 3: "normalized_abs_difference"}


def _as_list_array(values: pa.Array) -> pa.ListArray:
    valid = np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(valid, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.drop_null(), mask=pa.array(~valid))


def record_batch(table: pa.Table, features: list[str]) -> pa.RecordBatch:
    arrays = [_as_list_array(table.column(name).combine_chunks()) for name in features]
    return pa.RecordBatch.from_arrays(arrays, features)


def statistics_of_batches(
    batches: list[pa.RecordBatch], schema: schema_pb2.Schema, histogram_buckets: int
) -> statistics_pb2.DatasetFeatureStatisticsList:
    options = stats_options(schema, histogram_buckets)
    if not batches:
        return statistics_pb2.DatasetFeatureStatisticsList(datasets=[statistics_pb2.DatasetFeatureStatistics()])
    table = pa.Table.from_batches(batches).combine_chunks()
    merged = table.to_batches()[0] if table.num_rows else batches[0]
    return stats_impl.generate_statistics_in_memory(merged, options)


def window_statistics(
    instances: pa.Table, features: list[str], schema: schema_pb2.Schema, histogram_buckets: int
) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Statistics of the given rows' features (one version's instances of a window)."""
    present = [name for name in features if name in instances.column_names]
    return statistics_of_batches([record_batch(instances, present)], schema, histogram_buckets)


def _measurements(anomalies: Any, which: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for info in anomalies.drift_skew_info:
        feature = ".".join(info.path.step)
        for measurement in getattr(info, which):
            out[feature] = {
                "value": float(measurement.value),
                "threshold": float(measurement.threshold),
                "measure": MEASUREMENTS.get(measurement.type, str(measurement.type)),
            }
    return out


def skew(
    training: statistics_pb2.DatasetFeatureStatisticsList,
    serving: statistics_pb2.DatasetFeatureStatisticsList,
    schema: schema_pb2.Schema,
    comparison: MonitoredComparison,
) -> dict[str, dict[str, float]]:
    """{feature: {value, threshold, measure}} of the serving window against the training data."""
    configured = with_comparators(schema, drift={}, skew=comparison.features)
    anomalies = tfdv.validate_statistics(training, configured, serving_statistics=serving)
    return _measurements(anomalies, "skew_measurements")


def drift(
    current: statistics_pb2.DatasetFeatureStatisticsList,
    previous: statistics_pb2.DatasetFeatureStatisticsList,
    schema: schema_pb2.Schema,
    comparison: MonitoredComparison,
    environment: str,
) -> dict[str, dict[str, float]]:
    configured = with_comparators(schema, drift=comparison.features, skew={})
    anomalies = tfdv.validate_statistics(current, configured, environment=environment, previous_statistics=previous)
    return _measurements(anomalies, "drift_measurements")


def schema_anomalies(
    statistics: statistics_pb2.DatasetFeatureStatisticsList, schema: schema_pb2.Schema, environment: str
) -> list[dict[str, str]]:
    """TFDV's own schema anomalies of the window (shown in the report; the alerts use exact shares)."""
    anomalies = tfdv.validate_statistics(statistics, schema, environment=environment)
    return [
        {"feature": feature, "description": info.description or info.short_description}
        for feature, info in sorted(anomalies.anomaly_info.items())
    ]


def missing_shares(statistics: statistics_pb2.DatasetFeatureStatisticsList | None) -> dict[str, float]:
    """Share of examples missing each feature, from TFDV statistics."""
    if statistics is None or not statistics.datasets:
        return {}
    dataset = statistics.datasets[0]
    out = {}
    for feature in dataset.features:
        name = feature.path.step[0] if feature.path.step else feature.name
        kind = feature.WhichOneof("stats")
        common = getattr(feature, kind).common_stats if kind in ("num_stats", "string_stats", "bytes_stats") else None
        if common is None:
            continue
        total = common.num_missing + common.num_non_missing
        if total:
            out[name] = common.num_missing / total
    return out


def domains(schema: schema_pb2.Schema) -> dict[str, tuple[str, Any]]:
    """{feature: ("range", (min, max)) | ("values", set)} from the schema's int, float and string domains."""
    named = {domain.name: list(domain.value) for domain in schema.string_domain}
    out: dict[str, tuple[str, Any]] = {}
    for feature in schema.feature:
        kind = feature.WhichOneof("domain_info")
        if kind == "int_domain":
            domain = feature.int_domain
            low = domain.min if domain.HasField("min") else -math.inf
            high = domain.max if domain.HasField("max") else math.inf
            out[feature.name] = ("range", (low, high))
        elif kind == "float_domain":
            domain = feature.float_domain
            low = domain.min if domain.HasField("min") else -math.inf
            high = domain.max if domain.HasField("max") else math.inf
            out[feature.name] = ("range", (low, high))
        elif kind == "domain" and feature.domain in named:
            out[feature.name] = ("values", set(named[feature.domain]))
        elif kind == "string_domain":
            out[feature.name] = ("values", set(feature.string_domain.value))
    return out


def data_quality(
    instances: pa.Table, features: list[str], domain: Mapping[str, tuple[str, Any]]
) -> dict[str, dict[str, float]]:
    """Per feature: rows, missing and out-of-domain counts and shares (vectorised over the rows)."""
    rows = instances.num_rows
    out: dict[str, dict[str, float]] = {}
    for name in features:
        if name not in instances.column_names:
            continue
        column = instances.column(name)
        missing = column.null_count
        present = rows - missing
        outside = 0
        rule = domain.get(name)
        if rule is not None and present:
            kind, value = rule
            if kind == "range":
                low, high = value
                numbers = pc.cast(column, pa.float64())
                bad = pc.or_(pc.less(numbers, low), pc.greater(numbers, high))
                outside = int(pc.sum(pc.fill_null(bad, False)).as_py() or 0)
            else:
                known = pa.array(sorted(value), type=pa.string())
                inside = pc.is_in(pc.cast(column, pa.string()), value_set=known)
                outside = int(present - (pc.sum(pc.fill_null(inside, False)).as_py() or 0))
        out[name] = {
            "rows": rows,
            "missing": missing,
            "missing_share": missing / rows if rows else 0.0,
            "out_of_domain": outside,
            "out_of_domain_share": outside / present if present else 0.0,
        }
    return out


def histogram(values: np.ndarray, buckets: int = 20) -> list[float]:
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=buckets, range=(0.0, 1.0))
    total = counts.sum()
    return [float(c) / total if total else 0.0 for c in counts]


def jensen_shannon(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms over the same buckets."""
    a, b = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if a.sum() <= 0 or b.sum() <= 0:
        return math.nan
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / y[mask])))

    return max(0.0, 0.5 * kl(a, m) + 0.5 * kl(b, m))


def _features_with(
    statistics: statistics_pb2.DatasetFeatureStatisticsList | None, kind: str
) -> Iterator[tuple[str, Any]]:
    """(name, statistics) of the first dataset's features whose statistics are of `kind` (num_stats, string_stats)."""
    if statistics is None or not statistics.datasets:
        return
    for feature in statistics.datasets[0].features:
        if feature.WhichOneof("stats") == kind:
            yield (feature.path.step[0] if feature.path.step else feature.name), getattr(feature, kind)


def numeric_summary(
    statistics: statistics_pb2.DatasetFeatureStatisticsList | None,
) -> dict[str, dict[str, float]]:
    """Per numeric feature: mean and quartiles (for the report's trends over windows)."""
    out: dict[str, dict[str, float]] = {}
    for name, stats in _features_with(statistics, "num_stats"):
        quantiles = [h for h in stats.histograms if h.type == statistics_pb2.Histogram.QUANTILES]
        entry = {"mean": stats.mean, "median": stats.median}
        if quantiles and quantiles[0].buckets:
            buckets = quantiles[0].buckets
            n = len(buckets)
            entry["p25"] = buckets[max(0, n // 4 - 1)].high_value
            entry["p75"] = buckets[min(n - 1, (3 * n) // 4 - 1)].high_value
        out[name] = {key: round(float(value), 6) for key, value in entry.items()}
    return out


def top_share(statistics: statistics_pb2.DatasetFeatureStatisticsList | None) -> dict[str, dict[str, float]]:
    """Per categorical feature: the shares of its most frequent values."""
    out: dict[str, dict[str, float]] = {}
    for name, stats in _features_with(statistics, "string_stats"):
        total = stats.common_stats.num_non_missing or 1
        out[name] = {value.value: round(value.frequency / total, 4) for value in stats.top_values[:6]}
    return out
