"""TFDV statistics through Beam, and the checks that read them: schema anomalies, drift and skew.

One Beam pipeline computes statistics for every dataset the stage compares (the new span, the
previous span, serving data), reading each file once with our typed CSV decoder. DirectRunner
here; DataflowRunner or another runner by pipeline options alone. Drift and skew thresholds come
from the pipeline config and are applied to a copy of the curated schema, so the checked-in schema
stays the reviewed description of the data and the config holds the operating thresholds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import tensorflow_data_validation as tfdv
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from tfpipe.validation.csv_batches import BYTES, ColumnProblems, DecodeReport, decode_csv
from tfpipe.validation.findings import Finding, Severity

STATISTICS_FILE = "statistics.pb"
DECODE_REPORT_FILE = "decode_report.json"
_COMPARATOR_REASONS = {
    anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH,
}


def load_schema(uri: str) -> schema_pb2.Schema:
    return tfdv.load_schema_text(uri)


def feature_types(schema: schema_pb2.Schema) -> dict[str, int]:
    return {feature.name: feature.type for feature in schema.feature}


class _DecodeFiles(beam.DoFn):
    REPORT = "report"

    def __init__(self, types: dict[str, int]) -> None:
        self._types = types

    def process(self, uri: str) -> Iterator[Any]:
        report = DecodeReport()
        with FileSystems.open(uri, compression_type="uncompressed") as handle:
            yield from decode_csv(handle, uri, self._types, report)
        yield beam.pvalue.TaggedOutput(self.REPORT, report)


def _report_to_json(report: DecodeReport) -> str:
    return json.dumps(dataclasses.asdict(report), sort_keys=True)


def _report_from_json(text: str) -> DecodeReport:
    data = json.loads(text)
    report = DecodeReport(
        rows=data["rows"],
        files=data["files"],
        fatal=[tuple(item) for item in data["fatal"]],
        empty_files=data["empty_files"],
        header_only_files=data["header_only_files"],
        bad_rows=ColumnProblems(**data["bad_rows"]),
    )
    report.type_errors = {k: ColumnProblems(**v) for k, v in data["type_errors"].items()}
    report.non_integers = {k: ColumnProblems(**v) for k, v in data["non_integers"].items()}
    return report


def stats_options(schema: schema_pb2.Schema, histogram_buckets: int = 50) -> tfdv.StatsOptions:
    return tfdv.StatsOptions(
        schema=schema,
        num_top_values=20,
        num_rank_histogram_buckets=100,
        num_histogram_buckets=histogram_buckets,
        num_quantiles_histogram_buckets=histogram_buckets,
    )


def compute_statistics(
    datasets: dict[str, list[str]],
    schema: schema_pb2.Schema,
    output_dir: Path,
    beam_args: list[str],
    histogram_buckets: int = 50,
) -> dict[str, tuple[statistics_pb2.DatasetFeatureStatisticsList, DecodeReport]]:
    """Statistics and decode reports of each named dataset (a list of CSV file URIs), in one Beam run."""
    types = feature_types(schema)
    options = stats_options(schema, histogram_buckets)
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        for name, uris in datasets.items():
            folder = output_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            decoded = (
                pipeline
                | f"ListFiles[{name}]" >> beam.Create(sorted(uris))
                | f"Decode[{name}]" >> beam.ParDo(_DecodeFiles(types)).with_outputs(_DecodeFiles.REPORT, main="batches")
            )
            _ = (
                decoded.batches
                | f"Statistics[{name}]" >> tfdv.GenerateStatistics(options)
                | f"WriteStatistics[{name}]" >> tfdv.WriteStatisticsToBinaryFile(str(folder / STATISTICS_FILE))
            )
            _ = (
                decoded[_DecodeFiles.REPORT]
                | f"MergeReports[{name}]" >> beam.CombineGlobally(_merge_reports)
                | f"WriteReport[{name}]" >> beam.Map(_write_report, str(folder / DECODE_REPORT_FILE))
            )
    return {
        name: (
            tfdv.load_stats_binary(str(output_dir / name / STATISTICS_FILE)),
            _report_from_json((output_dir / name / DECODE_REPORT_FILE).read_text()),
        )
        for name in datasets
    }


def _merge_reports(reports: Any) -> DecodeReport:
    merged = DecodeReport()
    for report in reports:
        merged = merged.merge(report)
    return merged


def _write_report(report: DecodeReport, path: str) -> None:
    Path(path).write_text(_report_to_json(report))


@dataclasses.dataclass(frozen=True)
class ComparatorPolicy:
    """Threshold and severity of one feature's drift or skew comparison; threshold None = not compared."""

    threshold: float | None
    severity: Severity


def with_comparators(
    schema: schema_pb2.Schema, drift: dict[str, ComparatorPolicy], skew: dict[str, ComparatorPolicy]
) -> schema_pb2.Schema:
    """A copy of the schema with L-infinity (categorical) / Jensen-Shannon (numeric) comparators set."""
    configured = copy.deepcopy(schema)
    for feature in configured.feature:
        for policies, field_name in ((drift, "drift_comparator"), (skew, "skew_comparator")):
            policy = policies.get(feature.name)
            if policy is None or policy.threshold is None:
                continue
            comparator = getattr(feature, field_name)
            if feature.type == BYTES:
                comparator.infinity_norm.threshold = policy.threshold
            else:
                comparator.jensen_shannon_divergence.threshold = policy.threshold
    return configured


def _measurement_name(measurement_type: int) -> str:
    names = {1: "l_infinity", 2: "jensen_shannon", 3: "normalized_abs_difference"}
    return names.get(measurement_type, f"measurement_{measurement_type}")


def anomalies_to_findings(
    anomalies: anomalies_pb2.Anomalies,
    drift: dict[str, ComparatorPolicy],
    skew: dict[str, ComparatorPolicy],
    *,
    previous_name: str = "the previous span",
    serving_name: str = "serving data",
) -> list[Finding]:
    found: list[Finding] = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        for reason in info.reason:
            if reason.type in _COMPARATOR_REASONS:
                continue  # reported below from the measurements, with their numbers
            rule = anomalies_pb2.AnomalyInfo.Type.Name(reason.type).lower()
            message = reason.description or reason.short_description
            found.append(Finding("schema", rule, feature, "error", message, {"short": reason.short_description}))
    for reason in anomalies.dataset_anomaly_info.reason:
        rule = anomalies_pb2.AnomalyInfo.Type.Name(reason.type).lower()
        found.append(Finding("schema", rule, None, "error", reason.description or reason.short_description))
    for info in anomalies.drift_skew_info:
        feature = ".".join(info.path.step)
        for measurements, policies, check, against in (
            (info.drift_measurements, drift, "drift", previous_name),
            (info.skew_measurements, skew, "skew", serving_name),
        ):
            for measurement in measurements:
                if measurement.value <= measurement.threshold:
                    continue
                name = _measurement_name(measurement.type)
                policy = policies.get(feature)
                found.append(
                    Finding(
                        check,
                        name,
                        feature,
                        policy.severity if policy else "error",
                        f"{name.replace('_', '-')} distance {measurement.value:.3f} from {against} "
                        f"exceeds {measurement.threshold:.3f} (by {measurement.value - measurement.threshold:.3f})",
                        {"value": measurement.value, "threshold": measurement.threshold},
                    )
                )
    return found


def validate(
    statistics: statistics_pb2.DatasetFeatureStatisticsList,
    schema: schema_pb2.Schema,
    *,
    environment: str | None,
    previous: statistics_pb2.DatasetFeatureStatisticsList | None,
    serving: statistics_pb2.DatasetFeatureStatisticsList | None,
    drift: dict[str, ComparatorPolicy],
    skew: dict[str, ComparatorPolicy],
    serving_name: str = "serving data",
) -> tuple[anomalies_pb2.Anomalies, list[Finding]]:
    configured = with_comparators(schema, drift if previous is not None else {}, skew if serving is not None else {})
    anomalies = tfdv.validate_statistics(
        statistics, configured, environment=environment, previous_statistics=previous, serving_statistics=serving
    )
    return anomalies, anomalies_to_findings(anomalies, drift, skew, serving_name=serving_name)
