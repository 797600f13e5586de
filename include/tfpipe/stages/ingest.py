"""Ingest: collect the run's input data into its examples folder, with a manifest and fingerprint.

Input is either one span of the landing area (scheduled runs and backfills) or a file or folder a
person named when triggering the run. The output is `<output>/trips.csv` (the input rows, header
once, in a stable file order) and `<output>/manifest.json` (the sources with their checksums, row
and column counts, and a fingerprint of the data that lineage records). Ingest streams: memory does
not grow with the data. Deep checks of the content are the validation stage's job; ingest refuses
only what cannot be data at all (no files, an empty file, a file without a header, files whose
headers disagree).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
from typing import Any

from tfpipe import artifacts
from tfpipe.data.landing import DATA_FILE
from tfpipe.data.spans import parse_span, span_folder
from tfpipe.errors import DataError, StageError

log = logging.getLogger(__name__)
MANIFEST_FILE = "manifest.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-uri", required=True, help="examples folder of this run")
    parser.add_argument("--landing-uri", help="landing area holding span=YYYY-MM folders")
    parser.add_argument("--span", help="span to ingest (YYYY-MM) when no --data-uri is given")
    parser.add_argument("--data-uri", help="a CSV file or a folder of CSV files; overrides --span")


def resolve_sources(args: argparse.Namespace) -> list[str]:
    if args.data_uri:
        return artifacts.csv_files(args.data_uri, "data_uri")
    if not args.span:
        raise StageError("nothing to ingest: give --data-uri, or --span with --landing-uri")
    if not args.landing_uri:
        raise StageError("--span needs --landing-uri")
    try:
        parse_span(args.span)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    folder = artifacts.join(args.landing_uri, span_folder(args.span))
    if not artifacts.is_dir(folder):
        raise DataError(f"{folder}: span {args.span} has not landed (no such folder)")
    sources = artifacts.list_files(folder, ".csv")
    if not sources:
        raise DataError(f"{folder}: span {args.span} has no .csv files")
    return sources


def _copy_rows(source: str, out: Any, expected_header: list[str] | None) -> tuple[list[str], int, str]:
    """Append a source's data rows to `out`; return its header, row count and sha256."""
    digest = hashlib.sha256()
    with artifacts.open_binary(source) as raw:

        class _Hashing(io.RawIOBase):
            # Hash the bytes as the CSV reader consumes them: one pass over the file.
            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int:
                chunk = raw.read(len(buffer))
                digest.update(chunk)
                buffer[: len(chunk)] = chunk
                return len(chunk)

        text = io.TextIOWrapper(io.BufferedReader(_Hashing(), 1 << 20), encoding="utf-8", newline="")
        try:
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{source}: empty file, expected a header row")
            if expected_header is not None and header != expected_header:
                raise DataError(f"{source}: header {header} differs from the first file's {expected_header}")
            writer = csv.writer(out, lineterminator="\n")
            if expected_header is None:
                writer.writerow(header)
            rows = 0
            for row in reader:
                writer.writerow(row)
                rows += 1
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{source}: not UTF-8 text (byte {exc.start} of a chunk): binary or wrongly encoded file"
            ) from None
        except csv.Error as exc:
            raise DataError(f"{source}: unreadable CSV: {exc}") from None
    return header, rows, digest.hexdigest()


def run(args: argparse.Namespace) -> dict[str, Any]:
    sources = resolve_sources(args)
    header: list[str] | None = None
    manifest_sources = []
    with artifacts.staged_output(args.output_uri) as staging:
        with open(staging / DATA_FILE, "w", newline="", encoding="utf-8") as out:
            for source in sources:
                header, rows, sha256 = _copy_rows(source, out, header)
                log.info("ingested %s: %d rows", source, rows)
                manifest_sources.append({"uri": source, "rows": rows, "sha256": sha256})
        row_count = sum(item["rows"] for item in manifest_sources)
        fingerprint = hashlib.sha256("\n".join(item["sha256"] for item in manifest_sources).encode()).hexdigest()
        manifest = {
            "span": None if args.data_uri else args.span,
            "data_uri": args.data_uri or None,
            "sources": manifest_sources,
            "columns": header,
            "row_count": row_count,
            "fingerprint": fingerprint,
        }
        artifacts.write_json(str(staging / MANIFEST_FILE), manifest)
    log.info("examples: %d rows, %d columns, fingerprint %s", row_count, len(header or []), fingerprint[:12])
    return {
        "examples_uri": args.output_uri,
        "trips_uri": artifacts.join(args.output_uri, DATA_FILE),
        "row_count": row_count,
        "fingerprint": fingerprint,
    }
