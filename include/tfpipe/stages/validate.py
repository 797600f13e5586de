"""Validate: the first gate of the training pipeline. No data reaches training unless it passes.

Computes TFDV statistics of the run's examples (and of the previous span and serving data when
given) in one Beam pipeline, checks them against the curated schema in the training environment,
compares distributions for drift (previous span) and skew (serving data) with per-feature
thresholds, runs the Great Expectations suite for dataset rules, and writes a report a person can
read. Any error-severity finding fails the stage after the report is written; the failure message
is the short summary (each failing column and rule) and ends with the report's location.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tfpipe import artifacts
from tfpipe.config import ComparisonConfig, ValidationConfig
from tfpipe.data.landing import DATA_FILE
from tfpipe.data.spans import parse_span
from tfpipe.errors import DataError, TfpipeError
from tfpipe.validation.findings import Finding, errors, summary

log = logging.getLogger(__name__)
REPORT_FILE = "report.html"
FINDINGS_FILE = "findings.json"
ANOMALIES_FILE = "anomalies.pbtxt"


class ValidationFailed(TfpipeError):
    """The data did not pass; the message is the summary of what failed and where the report is."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples-uri", required=True, help="examples folder written by ingest")
    parser.add_argument("--output-uri", required=True, help="validation folder of this run")
    parser.add_argument("--config", required=True, help="the pipeline's validation config as JSON")
    parser.add_argument("--span", help="the run's span (YYYY-MM): freshness is checked against it")
    parser.add_argument("--previous-uri", help="data of the previous span (CSV file or folder), for drift")
    parser.add_argument("--serving-uri", help="serving data (CSV file or folder), for training/serving skew")


def _csv_files(uri: str) -> list[str]:
    return artifacts.list_files(uri, ".csv") if artifacts.is_dir(uri) else [uri]


def _policies(comparison: ComparisonConfig) -> dict[str, Any]:
    from tfpipe.validation.tfdv_checks import ComparatorPolicy

    return {name: ComparatorPolicy(item.threshold, item.severity) for name, item in comparison.features.items()}


def _too_small(name: str, rows: dict[str, int], comparison: ComparisonConfig, check: str) -> Finding | None:
    small = {side: count for side, count in rows.items() if count < comparison.min_examples}
    if not small:
        return None
    sides = ", ".join(f"{side} has {count}" for side, count in small.items())
    return Finding(
        check,
        "too_few_examples",
        None,
        "warning",
        f"{check} against {name} not judged: {sides} rows, fewer than {comparison.min_examples}",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow_data_validation as tfdv

    from tfpipe.validation import tfdv_checks
    from tfpipe.validation.expectations import run_expectations
    from tfpipe.validation.report import render_validation_report

    config = ValidationConfig.model_validate(json.loads(args.config))
    schema = tfdv_checks.load_schema(config.schema_path)
    span = parse_span(args.span) if args.span else None
    examples = artifacts.join(args.examples_uri, DATA_FILE)
    datasets = {"examples": [examples]}
    if args.previous_uri:
        if artifacts.exists(args.previous_uri):
            datasets["previous"] = _csv_files(args.previous_uri)
        else:
            log.info("no previous span at %s: drift is not checked for the first span", args.previous_uri)
    if args.serving_uri:
        if not artifacts.exists(args.serving_uri):
            raise DataError(f"{args.serving_uri}: serving data not found (serving_uri)")
        datasets["serving"] = _csv_files(args.serving_uri)

    with artifacts.staged_output(args.output_uri) as staging:
        started = time.perf_counter()
        computed = tfdv_checks.compute_statistics(
            datasets,
            schema,
            staging / "statistics",
            config.beam_pipeline_args,
            histogram_buckets=config.histogram_buckets,
        )
        log.info("statistics of %s in %.1f s", ", ".join(datasets), time.perf_counter() - started)
        statistics, decoded = computed["examples"]
        findings: list[Finding] = decoded.findings("examples")
        rows = {"this span": decoded.rows}
        previous = serving = shown_baseline = None
        drift = _policies(config.drift)
        skew = _policies(config.skew)
        if "previous" in computed:
            previous_rows = computed["previous"][1].rows
            small = _too_small("the previous span", {**rows, "previous span": previous_rows}, config.drift, "drift")
            findings += [small] if small else []
            previous = None if small else computed["previous"][0]
            shown_baseline = computed["previous"][0]  # shown in the report even when too small to judge
        if "serving" in computed:
            serving_rows = computed["serving"][1].rows
            findings += [f for f in computed["serving"][1].findings("serving") if f.check == "file"]
            small = _too_small("serving data", {**rows, "serving data": serving_rows}, config.skew, "skew")
            findings += [small] if small else []
            serving = None if small else computed["serving"][0]

        fatal = any(f.check == "file" and f.rule in {"unreadable_file", "empty_file", "no_rows"} for f in findings)
        if not fatal:
            anomalies, schema_findings = tfdv_checks.validate(
                statistics,
                schema,
                environment=config.training_environment,
                previous=previous,
                serving=serving,
                drift=drift,
                skew=skew,
            )
            tfdv.write_anomalies_text(anomalies, str(staging / ANOMALIES_FILE))
            findings += schema_findings
            started = time.perf_counter()
            frame = _read_frame(examples, _expectation_columns(config))
            outcome = run_expectations(
                frame,
                config.expectations,
                span=span,
                output_dir=staging / "expectations",
                run_name=args.span or "named-data",
                run_time=span[0] if span else None,
            )
            findings += outcome.findings
            log.info("Great Expectations suite in %.1f s", time.perf_counter() - started)

        report_uri = artifacts.join(args.output_uri, REPORT_FILE)
        artifacts.write_json(str(staging / FINDINGS_FILE), [f.to_dict() for f in findings])
        render_validation_report(
            staging / REPORT_FILE,
            title=f"Data validation: {args.span or 'named data'}",
            statistics=statistics,
            baseline=shown_baseline,
            baseline_name="previous span",
            findings=findings,
            links={"Great Expectations Data Docs": "expectations/data_docs/index.html", "anomalies": ANOMALIES_FILE},
        )

    failed = errors(findings)
    text = summary(findings, report_uri)
    for line in text.splitlines():
        (log.error if line.startswith("ERROR") else log.warning if line.startswith("WARNING") else log.info)(line)
    if failed:
        raise ValidationFailed(f"validation failed: {len(failed)} error(s)\n{text}", {"report_uri": report_uri})
    return {
        "passed": True,
        "rows": decoded.rows,
        "warnings": len(findings),
        "report_uri": report_uri,
        "statistics_uri": artifacts.join(args.output_uri, "statistics", "examples", tfdv_checks.STATISTICS_FILE),
        "anomalies_uri": artifacts.join(args.output_uri, ANOMALIES_FILE),
    }


def _expectation_columns(config: ValidationConfig) -> list[str]:
    rules = config.expectations
    columns: list[str] = []
    for rule in rules.unique:
        columns += rule.columns
    for rule in rules.at_most_multiple:
        columns += [rule.column, rule.of]
    if rules.freshness is not None:
        columns.append(rules.freshness.column)
    if rules.non_negative is not None:
        columns += rules.non_negative.columns
    return list(dict.fromkeys(columns))


def _read_frame(uri: str, columns: list[str]) -> Any:
    """The columns the Great Expectations rules read, as a data frame; numeric columns as numbers."""
    if artifacts.is_remote(uri):  # GX reads a local copy; statistics above streamed the original
        folder = Path(tempfile.mkdtemp(prefix="tfpipe-gx-"))
        try:
            with artifacts.open_binary(uri) as source, open(folder / DATA_FILE, "wb") as target:
                shutil.copyfileobj(source, target)
            return _read_columns(folder / DATA_FILE, columns)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return _read_columns(artifacts.local_path(uri), columns)


def _read_columns(path: Path, columns: list[str]) -> Any:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    # Malformed rows and values that are not numbers were already reported by the decoder; here
    # the rows are skipped and the values count as missing. Only the columns the rules read.
    with open(path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    wanted = [column for column in columns if column in header]
    table = pa_csv.read_csv(
        path,
        parse_options=pa_csv.ParseOptions(invalid_row_handler=lambda row: "skip"),
        convert_options=pa_csv.ConvertOptions(
            include_columns=wanted, column_types=dict.fromkeys(wanted, pa.string()), strings_can_be_null=True
        ),
    )
    frame = {}
    for name in wanted:
        text = table.column(name)
        try:
            frame[name] = pc.cast(text, pa.float64()).to_pandas()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            numbers = pd.to_numeric(text.to_pandas(), errors="coerce")
            # A numeric column with a few bad values stays numeric; a text column stays text.
            is_numeric = numbers.notna().sum() >= (text.length() - text.null_count) / 2
            frame[name] = numbers if is_numeric else text.to_pandas()
    return pd.DataFrame(frame)
