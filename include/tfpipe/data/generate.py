"""Generate taxi-shaped CSV data of any size from the sample, for benchmarks.

Rows are drawn from the sample with replacement, so the mix of categories and the rate of missing
values match it. Each drawn row is then varied a little:

- fare, trip_miles, trip_seconds and tips are scaled by one random factor per row (so a trip that
  is longer also costs more and tips more), then rounded to the sample's own steps (fares in 0.05,
  miles in 0.1, seconds in 60, tips in 0.01). Scaling by a positive factor never makes them negative.
- latitudes and longitudes move by a small noise (about 100 m).
- trip_start_timestamp keeps the row's time of day (so hours stay as busy as in the sample) on a
  date drawn uniformly from the requested spans; trip_start_month, trip_start_hour and
  trip_start_day (1 = Sunday, as in the sample) are recomputed from it, in UTC like the sample.
- big_tipper is recomputed from the written tips and fare: tips > 0.2 * fare.

Empty values stay empty. Other columns are copied from the drawn row. The output has the sample's
header and column order.

Generation streams in chunks of --chunk-rows rows, so memory does not grow with --rows. The random
draws are made in fixed blocks of BLOCK_ROWS rows, each with its own seeded stream, so the output
depends only on the sample, seed, spans and row count: the same bytes for any chunk size, and the
first n rows are the same whatever the total. The file is written to a temporary file in the same
folder and moved into place when complete.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfpipe import artifacts
from tfpipe.data.landing import read_header
from tfpipe.data.spans import parse_span, span_of_timestamp
from tfpipe.errors import DataError, StageError

log = logging.getLogger(__name__)

TIMESTAMP = "trip_start_timestamp"
MONTH = "trip_start_month"
HOUR = "trip_start_hour"
DAY = "trip_start_day"
LABEL = "big_tipper"
FARE = "fare"
TIPS = "tips"
TIP_SHARE = 0.2  # big_tipper: tips > TIP_SHARE * fare
# Columns scaled together per row: column -> (steps per unit to round to, decimals written).
SCALED: dict[str, tuple[int, int]] = {"fare": (20, 2), "trip_miles": (10, 1), "tips": (100, 2)}
SECONDS = "trip_seconds"  # also scaled, and rounded to whole minutes as in the sample
SECONDS_STEP = 60
COORDINATES = ("pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude")
COORDINATE_DECIMALS = 9
SCALE_SIGMA = 0.1  # log-normal spread of the per-row scale factor (mean 1)
SCALE_LIMITS = (0.6, 1.6)
COORDINATE_SIGMA = 0.001  # degrees, about 100 m
COORDINATE_LIMIT = 0.005
BLOCK_ROWS = 4096  # rows per independently seeded block of random draws; fixed, part of the output's definition
DEFAULT_CHUNK_ROWS = 100_000
SECONDS_PER_DAY = 86_400
_SMALL_INTS = np.array([str(i) for i in range(32)], dtype=object)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-uri", required=True, help="CSV file of sample trips with a header row")
    parser.add_argument("--output-uri", required=True, help="CSV file to write (replaced whole)")
    parser.add_argument("--rows", type=int, required=True, help="number of rows to generate")
    parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0); same seed, same bytes")
    parser.add_argument("--first-span", help="first month of trip_start_timestamp, YYYY-MM (default: the sample's)")
    parser.add_argument("--last-span", help="last month of trip_start_timestamp, YYYY-MM (default: the sample's)")
    parser.add_argument(
        "--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows generated and written at a time (memory)"
    )


@dataclass(frozen=True)
class Sample:
    header: list[str]
    text: dict[str, np.ndarray]  # column -> object array of the sample's strings
    numbers: dict[str, np.ndarray]  # treated numeric column -> float64 array, NaN where empty
    first_span: str
    last_span: str

    @property
    def rows(self) -> int:
        return len(self.text[self.header[0]])


def load_sample(path: Path) -> Sample:
    """Read the sample CSV whole (it is small) and parse the columns that generation changes."""
    if not path.is_file():
        raise DataError(f"sample file {path}: no such file")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = read_header(reader, path, TIMESTAMP)
        if len(set(header)) != len(header):
            raise DataError(f"sample file {path}: repeated column names in the header {header}")
        rows = []
        for line_number, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DataError(
                    f"sample file {path}: line {line_number} has {len(row)} fields, header has {len(header)}"
                )
            rows.append(row)
    if not rows:
        raise DataError(f"sample file {path}: no rows after the header")
    text = {name: np.array([row[i] for row in rows], dtype=object) for i, name in enumerate(header)}
    numbers = {}
    for name in [TIMESTAMP, *SCALED, SECONDS, *COORDINATES]:
        if name in text:
            numbers[name] = _parse_numbers(path, name, text[name])
    timestamps = numbers[TIMESTAMP]
    if np.isnan(timestamps).all():
        raise DataError(f"sample file {path}: column {TIMESTAMP!r} is empty in every row")
    try:
        first_span, last_span = (span_of_timestamp(float(f(timestamps))) for f in (np.nanmin, np.nanmax))
    except (ValueError, OverflowError, OSError):
        raise DataError(f"sample file {path}: column {TIMESTAMP!r} has values that are not Unix times") from None
    return Sample(header=header, text=text, numbers=numbers, first_span=first_span, last_span=last_span)


def _parse_numbers(path: Path, column: str, values: np.ndarray) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values.tolist()):
        if value == "":
            continue
        try:
            out[i] = float(value)
        except ValueError:
            raise DataError(f"sample file {path}: line {i + 2}: {column}={value!r} is not a number") from None
        if not np.isfinite(out[i]):
            raise DataError(f"sample file {path}: line {i + 2}: {column}={value!r} is not a finite number")
    return out


def _span_range(sample: Sample, first_span: str | None, last_span: str | None) -> tuple[str, str, int, int]:
    """The chosen spans and their whole days, as (first, last, first day since 1970, number of days)."""
    first = first_span or sample.first_span
    last = last_span or sample.last_span
    try:
        start, _ = parse_span(first)
    except ValueError:
        raise StageError(f"--first-span {first!r} is not of the form YYYY-MM") from None
    try:
        _, end = parse_span(last)
    except ValueError:
        raise StageError(f"--last-span {last!r} is not of the form YYYY-MM") from None
    if first > last:
        raise StageError(f"--first-span {first} is after --last-span {last}")
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return first, last, (start - epoch).days, (end - start).days


class _Draws:
    """The random draws for any range of rows, made in fixed blocks so that chunking does not matter."""

    def __init__(self, seed: int, sample_rows: int, days: int) -> None:
        self.seed, self.sample_rows, self.days = seed, sample_rows, days
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None

    def _block(self, block: int) -> dict[str, np.ndarray]:
        if self._cached is not None and self._cached[0] == block:
            return self._cached[1]
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(block,))))
        draws = {
            "row": rng.integers(0, self.sample_rows, BLOCK_ROWS),
            "day": rng.integers(0, self.days, BLOCK_ROWS),
            "scale": np.clip(np.exp(rng.normal(-(SCALE_SIGMA**2) / 2, SCALE_SIGMA, BLOCK_ROWS)), *SCALE_LIMITS),
            "noise": np.clip(
                rng.normal(0.0, COORDINATE_SIGMA, (len(COORDINATES), BLOCK_ROWS)), -COORDINATE_LIMIT, COORDINATE_LIMIT
            ),
        }
        self._cached = (block, draws)
        return draws

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        first, last = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS
        blocks = [self._block(b) for b in range(first, last + 1)]
        offset = start - first * BLOCK_ROWS
        return {
            key: np.concatenate([block[key] for block in blocks], axis=-1)[..., offset : offset + stop - start]
            for key in blocks[0]
        }


def _format(values: np.ndarray, decimals: int | None, empty: np.ndarray) -> list[str]:
    """Numbers as text with `decimals` decimals (None: whole numbers), "" where `empty`."""
    out = list(map(str if decimals is None else f"{{:.{decimals}f}}".format, values.tolist()))
    for i in np.flatnonzero(empty).tolist():
        out[i] = ""
    return out


def _patch(values: list[str], where: np.ndarray, replacement: np.ndarray) -> list[str]:
    for i in np.flatnonzero(where).tolist():
        values[i] = replacement[i]
    return values


def _chunk(sample: Sample, draws: dict[str, np.ndarray], first_day: int) -> list[list[str]]:
    """The columns of one chunk of generated rows, as lists of strings in the sample's column order."""
    row = draws["row"]
    columns: dict[str, list[str]] = {}
    numbers = {name: values[row] for name, values in sample.numbers.items()}

    # Time: the drawn row's time of day on a uniformly drawn date.
    no_time = np.isnan(numbers[TIMESTAMP])
    time_of_day = np.nan_to_num(numbers[TIMESTAMP]).astype(np.int64) % SECONDS_PER_DAY
    days = first_day + draws["day"]
    timestamps = days * SECONDS_PER_DAY + time_of_day
    columns[TIMESTAMP] = list(map(str, timestamps.tolist()))
    derived = {
        MONTH: days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12 + 1,
        HOUR: time_of_day // 3600,
        DAY: (days + 4) % 7 + 1,  # 1970-01-01 was a Thursday (5); 1 = Sunday
    }
    for name, values in derived.items():
        if name in sample.text:
            columns[name] = _SMALL_INTS[values].tolist()
    if no_time.any():  # no timestamp in the drawn row: leave it and its parts as they were
        for name in [TIMESTAMP, *derived]:
            if name in columns:
                _patch(columns[name], no_time, sample.text[name][row])

    # Trip size: one scale factor per row, rounded to the sample's steps.
    written: dict[str, np.ndarray] = {}
    for name, (steps, decimals) in SCALED.items():
        if name in numbers:
            scaled = numbers[name] * draws["scale"]
            empty = np.isnan(scaled)
            # k / steps is the double nearest the decimal written, so the label below matches the file.
            written[name] = np.where(empty, np.nan, np.rint(np.nan_to_num(scaled) * steps) / steps)
            columns[name] = _format(np.nan_to_num(written[name]), decimals, empty)
    if SECONDS in numbers:
        scaled = numbers[SECONDS] * draws["scale"]
        minutes = np.rint(np.nan_to_num(scaled) / SECONDS_STEP).astype(np.int64)
        columns[SECONDS] = _format(minutes * SECONDS_STEP, None, np.isnan(scaled))

    for name, noise in zip(COORDINATES, draws["noise"], strict=True):
        if name in numbers:
            moved = numbers[name] + noise
            columns[name] = _format(np.nan_to_num(moved), COORDINATE_DECIMALS, np.isnan(moved))

    if LABEL in sample.text and FARE in written and TIPS in written:
        fare, tips = written[FARE], written[TIPS]
        columns[LABEL] = np.where(tips > TIP_SHARE * fare, "1", "0").astype(object).tolist()
        no_label = np.isnan(fare) | np.isnan(tips)
        if no_label.any():
            _patch(columns[LABEL], no_label, sample.text[LABEL][row])

    return [columns[name] if name in columns else sample.text[name][row].tolist() for name in sample.header]


def generate(
    sample_uri: str,
    output_uri: str,
    rows: int,
    seed: int = 0,
    first_span: str | None = None,
    last_span: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> dict[str, Any]:
    """Write `rows` generated trips to `output_uri`; see the module docstring for how they are made."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows <= 0:
        raise StageError(f"--rows must be a positive whole number, got {rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise StageError(f"--seed must be a whole number >= 0, got {seed!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows <= 0:
        raise StageError(f"--chunk-rows must be a positive whole number, got {chunk_rows!r}")
    for option, uri in (("--sample-uri", sample_uri), ("--output-uri", output_uri)):
        if artifacts.is_remote(uri):
            raise StageError(f"{option} {uri}: only local paths are supported")
    sample_path, output = artifacts.local_path(sample_uri), artifacts.local_path(output_uri)
    if output.is_dir():
        raise StageError(f"--output-uri {output} is a folder, expected a CSV file path")
    sample = load_sample(sample_path)
    if output.exists() and output.resolve() == sample_path.resolve():
        raise StageError(f"--output-uri {output} is the sample file itself")
    first, last, first_day, days = _span_range(sample, first_span, last_span)
    log.info(
        "generating %d rows from %s (%d sample rows), seed %d, spans %s .. %s, %d rows per chunk",
        rows,
        sample_path,
        sample.rows,
        seed,
        first,
        last,
        chunk_rows,
    )

    output.parent.mkdir(parents=True, exist_ok=True)
    draws = _Draws(seed, sample.rows, days)
    descriptor, temp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with open(descriptor, "w", newline="", encoding="utf-8", buffering=1 << 20) as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(sample.header)
            reported = 0
            for start in range(0, rows, chunk_rows):
                stop = min(start + chunk_rows, rows)
                writer.writerows(zip(*_chunk(sample, draws.rows(start, stop), first_day), strict=True))
                if stop < rows and stop * 10 // rows > reported:  # about every tenth
                    reported = stop * 10 // rows
                    log.info("%d of %d rows written", stop, rows)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temp, 0o666 & ~mask)  # temp files are private; published ones are not
        os.replace(temp, output)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    size = output.stat().st_size
    log.info("wrote %d rows, %d bytes to %s", rows, size, output)
    return {"output_uri": output_uri, "rows": rows, "seed": seed, "first_span": first, "last_span": last, "bytes": size}


def run(args: argparse.Namespace) -> dict[str, Any]:
    return generate(
        sample_uri=args.sample_uri,
        output_uri=args.output_uri,
        rows=args.rows,
        seed=args.seed,
        first_span=args.first_span,
        last_span=args.last_span,
        chunk_rows=args.chunk_rows,
    )
