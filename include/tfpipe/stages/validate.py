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
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tfpipe import artifacts
from tfpipe.config import ComparisonConfig, ValidationConfig
from tfpipe.data.landing import DATA_FILE
from tfpipe.data.split import MANIFEST_FILE as SPLITS_MANIFEST
from tfpipe.data.split import split_files
from tfpipe.errors import TfpipeError
from tfpipe.stages import ERROR_PREFIX, RESULT_PREFIX
from tfpipe.validation.findings import Finding, errors, summary

log = logging.getLogger(__name__)
REPORT_FILE = "report.html"
FINDINGS_FILE = "findings.json"
ANOMALIES_FILE = "anomalies.pbtxt"


class ExpectationsProcess:
    """The `expectations` stage running beside this one, on the same examples."""

    def __init__(self, examples: str, config_json: str, span: str | None) -> None:
        self._output = Path(tempfile.mkdtemp(prefix="tfpipe-expectations-"))
        command = [
            sys.executable,
            "-m",
            "tfpipe",
            "expectations",
            "--data-uri",
            examples,
            "--config",
            config_json,
            "--output-uri",
            str(self._output / "expectations"),
        ]
        if span:
            command += ["--span", span]
        # Its log lines go straight to ours (stderr); its one result line is read here.
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self._started = time.perf_counter()

    def result(self, destination: Path) -> list[Finding]:
        """Wait for the suite; move its Data Docs to `destination`; return its findings."""
        stdout, _ = self._process.communicate()
        lines = stdout.splitlines()
        if self._process.returncode != 0 or not lines or not lines[-1].startswith(RESULT_PREFIX):
            shutil.rmtree(self._output, ignore_errors=True)
            error = next((line for line in lines if line.startswith(ERROR_PREFIX)), "")
            message = (
                json.loads(error[len(ERROR_PREFIX) :])["message"] if error else f"exit code {self._process.returncode}"
            )
            raise RuntimeError(f"the Great Expectations suite failed: {message}")
        shutil.move(str(self._output / "expectations"), str(destination))
        shutil.rmtree(self._output, ignore_errors=True)
        log.info("Great Expectations suite finished %.1f s after it started", time.perf_counter() - self._started)
        return [Finding(**item) for item in json.loads((destination / FINDINGS_FILE).read_text())]

    def cancel(self) -> None:
        if self._process.returncode is not None:
            return  # already collected
        if self._process.poll() is None:
            self._process.kill()
        self._process.communicate()
        shutil.rmtree(self._output, ignore_errors=True)


class ValidationFailed(TfpipeError):
    """The data did not pass; the message is the summary of what failed and where the report is."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples-uri", required=True, help="examples folder written by ingest")
    parser.add_argument("--output-uri", required=True, help="validation folder of this run")
    parser.add_argument("--config", required=True, help="the pipeline's validation config as JSON")
    parser.add_argument("--span", help="the run's span (YYYY-MM): freshness is checked against it")
    parser.add_argument("--previous-uri", help="data of the previous span (CSV file or folder), for drift")
    parser.add_argument("--serving-uri", help="serving data (CSV file or folder), for training/serving skew")
    parser.add_argument(
        "--splits-uri", help="the training window's splits: each is checked, and evaluation for skew against training"
    )


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


def _split_findings(computed: dict[str, Any], schema: Any, config: ValidationConfig) -> list[Finding]:
    """Schema findings of the training window's splits, and skew of the evaluation split against training.

    Each finding names its split, so "fare [schema/...]" says which data holds the problem.
    """
    from tfpipe.validation import tfdv_checks

    def check(statistics: Any, against: Any = None) -> list[Finding]:
        # TFDV compares `serving_statistics` against `statistics`: the evaluation split against training.
        return tfdv_checks.validate(
            against if against is not None else statistics,
            schema,
            environment=config.training_environment,
            previous=None,
            serving=statistics if against is not None else None,
            drift={},
            skew=_policies(config.split_skew),
            serving_name="the training split",
        )[1]

    found: list[Finding] = []
    for key, name in (("train", "training split"), ("eval", "evaluation split")):
        if key not in computed:
            continue
        statistics, decoded = computed[key]
        own = decoded.findings(name)
        if not any(f.check == "file" for f in own):
            own += check(statistics)
            if key == "eval" and "train" in computed:
                rows = {"evaluation split": decoded.rows}
                small = _too_small("the training split", rows, config.split_skew, "skew")
                own += [small] if small else [f for f in check(statistics, computed["train"][0]) if f.check == "skew"]
        found += [dataclasses.replace(f, message=f"{name}: {f.message}") for f in own]
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = ValidationConfig.model_validate(json.loads(args.config))
    examples = artifacts.join(args.examples_uri, DATA_FILE)
    # The Great Expectations suite runs in its own process, started first, so it works while this one
    # imports TensorFlow and computes statistics (about 8 s saved on a million rows, measured).
    expectations = ExpectationsProcess(examples, args.config, args.span)
    try:
        return _validate(args, config, examples, expectations)
    except BaseException:
        expectations.cancel()  # no orphan suite process or temp folder when this stage fails early
        raise


def _validate(
    args: argparse.Namespace, config: ValidationConfig, examples: str, expectations: ExpectationsProcess
) -> dict[str, Any]:
    import tensorflow_data_validation as tfdv

    from tfpipe.validation import tfdv_checks
    from tfpipe.validation.report import render_validation_report

    schema = tfdv_checks.load_schema(config.schema_path)
    datasets = {"examples": [examples]}
    if args.previous_uri:
        if artifacts.exists(args.previous_uri):
            datasets["previous"] = artifacts.csv_files(args.previous_uri, "previous_uri")
        else:
            log.info("no previous span at %s: drift is not checked for the first span", args.previous_uri)
    if args.serving_uri:
        datasets["serving"] = artifacts.csv_files(args.serving_uri, "serving_uri")
    if args.splits_uri:
        # Every span the model will learn from is checked, not only the new one: a span that landed
        # before this schema, or was fixed in place, cannot reach training unchecked.
        manifest = artifacts.read_json(artifacts.join(args.splits_uri, SPLITS_MANIFEST))
        if manifest["trainable"]:
            datasets["train"] = split_files(args.splits_uri, ("train", "validation"))[0]
            datasets["eval"] = split_files(args.splits_uri, ("eval",))[0]
        else:
            log.info("the splits are not checked: %s", manifest["reason"])

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

        findings += _split_findings(computed, schema, config)
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
            findings += expectations.result(staging / "expectations")

        if fatal:
            expectations.cancel()
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
        "warnings": len([f for f in findings if f.severity == "warning"]),
        "report_uri": report_uri,
        "statistics_uri": artifacts.join(args.output_uri, "statistics", "examples", tfdv_checks.STATISTICS_FILE),
        "anomalies_uri": artifacts.join(args.output_uri, ANOMALIES_FILE),
    }
