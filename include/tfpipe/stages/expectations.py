"""Expectations: the Great Expectations suite of the validation gate, as a stage of its own.

The validate stage starts it as a separate process so that it runs while the TFDV work imports
TensorFlow and computes statistics; it can also run alone. It writes Data Docs and findings.json
to --output-uri and reports failed rules as findings (it does not fail on them: the validate stage
decides, with every other check in view).
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
from tfpipe.config import ValidationConfig
from tfpipe.data.landing import DATA_FILE
from tfpipe.data.spans import parse_span
from tfpipe.errors import StageError

log = logging.getLogger(__name__)
FINDINGS_FILE = "findings.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-uri", required=True, help="CSV file of examples")
    parser.add_argument("--config", required=True, help="the pipeline's validation config as JSON")
    parser.add_argument("--output-uri", required=True, help="local folder for Data Docs and findings.json")
    parser.add_argument("--span", help="the run's span (YYYY-MM): freshness is checked against it")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tfpipe.validation.expectations import run_expectations

    config = ValidationConfig.model_validate(json.loads(args.config))
    try:
        span = parse_span(args.span) if args.span else None
    except ValueError as exc:
        raise StageError(str(exc)) from None
    started = time.perf_counter()
    frame = _read_frame(args.data_uri, _expectation_columns(config))
    output = Path(args.output_uri).resolve()
    outcome = run_expectations(
        frame,
        config.expectations,
        span=span,
        output_dir=output,
        run_name=args.span or "named-data",
        run_time=span[0] if span else None,
    )
    artifacts.write_json(str(output / FINDINGS_FILE), [finding.to_dict() for finding in outcome.findings])
    log.info("Great Expectations suite on %d rows in %.1f s", len(frame), time.perf_counter() - started)
    return {"findings": len(outcome.findings), "success": outcome.success, "data_docs_uri": outcome.data_docs_uri}


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
