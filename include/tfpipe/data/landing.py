"""Split a trips file into monthly spans in the landing area: <landing>/span=YYYY-MM/trips.csv.

The landing area is where new data arrives; each span folder is one unit of new data. Splitting is
streaming (one pass, constant memory) and idempotent: each span folder is replaced whole. Rows
whose timestamp is missing or unreadable are not dropped silently: they go to
<landing>/_rejected/trips.csv with the reason in an extra column, and are counted in the result.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import shutil
from pathlib import Path
from typing import Any

from tfpipe import artifacts
from tfpipe.data.spans import span_folder, span_of_timestamp
from tfpipe.errors import DataError

log = logging.getLogger(__name__)
DATA_FILE = "trips.csv"
REJECTED_FOLDER = "_rejected"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source-uri", required=True, help="CSV file of trips with a header row")
    parser.add_argument("--landing-uri", required=True, help="landing area folder")
    parser.add_argument("--timestamp-column", default="trip_start_timestamp")


def read_header(reader: Any, path: Path, required_column: str) -> list[str]:
    """The header row of a CSV reader; DataError naming the file if it is missing or lacks a column."""
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: empty file, expected a header row")
    if required_column not in header:
        raise DataError(f"{path}: no column {required_column!r} in the header {header}")
    return header


def land_spans(source: Path, landing: Path, timestamp_column: str) -> dict[str, Any]:
    landing.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    rejected = 0
    with open(source, newline="", encoding="utf-8") as handle, contextlib.ExitStack() as outputs:
        reader = csv.reader(handle)
        header = read_header(reader, source, timestamp_column)
        position = header.index(timestamp_column)
        writers: dict[str, Any] = {}

        def writer_for(folder_name: str, columns: list[str]) -> Any:
            # Each span folder is staged and swapped in whole when the ExitStack closes.
            if folder_name not in writers:
                folder = outputs.enter_context(artifacts.staged_output(str(landing / folder_name)))
                stream = outputs.enter_context(open(folder / DATA_FILE, "w", newline="", encoding="utf-8"))
                writers[folder_name] = csv.writer(stream, lineterminator="\n")
                writers[folder_name].writerow(columns)
            return writers[folder_name]

        for line_number, row in enumerate(reader, start=2):
            reason = None
            if len(row) != len(header):
                reason = f"line {line_number}: {len(row)} fields, header has {len(header)}"
            else:
                try:
                    span = span_of_timestamp(float(row[position]))
                except (ValueError, OverflowError, OSError):
                    reason = f"line {line_number}: {timestamp_column}={row[position]!r} is not a Unix time"
            if reason is not None:
                writer_for(REJECTED_FOLDER, [*header, "rejected_reason"]).writerow([*row, reason])
                rejected += 1
                continue
            writer_for(span_folder(span), header).writerow(row)
            counts[span] = counts.get(span, 0) + 1
    if not rejected and (landing / REJECTED_FOLDER).exists():
        shutil.rmtree(landing / REJECTED_FOLDER)  # left by an earlier landing of a different file
    counts = dict(sorted(counts.items()))
    log.info(
        "landed %d rows in %d spans (%s .. %s), rejected %d",
        sum(counts.values()),
        len(counts),
        min(counts, default="-"),
        max(counts, default="-"),
        rejected,
    )
    return {"landing_uri": str(landing), "spans": counts, "rows": sum(counts.values()), "rejected_rows": rejected}


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = artifacts.local_path(args.source_uri)
    if not source.is_file():
        raise DataError(f"{source}: no such file")
    return land_spans(source, artifacts.local_path(args.landing_uri), args.timestamp_column)
