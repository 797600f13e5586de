from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_CSV, write_sample_rows
from tfpipe.data import landing
from tfpipe.data.spans import parse_span, span_of_timestamp
from tfpipe.errors import DataError


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_the_sample_lands_in_48_monthly_spans_losing_no_row(tmp_path):
    result = landing.land_spans(SAMPLE_CSV, tmp_path, "trip_start_timestamp")
    assert result["rows"] == 15002 and result["rejected_rows"] == 0
    assert len(result["spans"]) == 48
    assert min(result["spans"]) == "2013-01" and max(result["spans"]) == "2016-12"
    header = _rows(SAMPLE_CSV)[0]
    position = header.index("trip_start_timestamp")
    for span, count in result["spans"].items():
        rows = _rows(tmp_path / f"span={span}" / "trips.csv")
        assert rows[0] == header
        assert len(rows) - 1 == count
        start, end = parse_span(span)
        assert all(start.timestamp() <= float(row[position]) < end.timestamp() for row in rows[1:])


def test_rows_without_a_usable_timestamp_are_kept_aside_with_a_reason(tmp_path):
    source = write_sample_rows(tmp_path / "trips.csv", 5)
    with open(source, "a") as handle:
        handle.write(",1.0,1,1,1,not-a-time,,,,,0,,,Cash,,0,,0,0\n")
        handle.write("only,three,fields\n")
    result = landing.land_spans(source, tmp_path / "landing", "trip_start_timestamp")
    assert result["rows"] == 5 and result["rejected_rows"] == 2
    rejected = _rows(tmp_path / "landing" / "_rejected" / "trips.csv")
    assert rejected[0][-1] == "rejected_reason"
    assert "not-a-time" in rejected[1][-1] and "line 7" in rejected[1][-1]
    assert "3 fields" in rejected[2][-1]


def test_landing_again_replaces_spans_instead_of_appending(tmp_path):
    source = write_sample_rows(tmp_path / "trips.csv", 50)
    first = landing.land_spans(source, tmp_path / "landing", "trip_start_timestamp")
    second = landing.land_spans(source, tmp_path / "landing", "trip_start_timestamp")
    assert first == second
    total = sum(len(_rows(p)) - 1 for p in (tmp_path / "landing").glob("span=*/trips.csv"))
    assert total == 50


def test_missing_timestamp_column_and_empty_file_are_named(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty.csv: empty file"):
        landing.land_spans(empty, tmp_path / "landing", "trip_start_timestamp")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"other.csv: no column 'trip_start_timestamp'"):
        landing.land_spans(other, tmp_path / "landing", "trip_start_timestamp")
    with pytest.raises(DataError, match="no such file"):
        landing.run(
            argparse.Namespace(source_uri=str(tmp_path / "nope.csv"), landing_uri=str(tmp_path), timestamp_column="t")
        )


def test_spans():
    assert span_of_timestamp(1356998400) == "2013-01"  # 2013-01-01T00:00:00Z
    assert span_of_timestamp(1356998399) == "2012-12"
    start, end = parse_span("2016-12")
    assert (start.year, start.month, end.year, end.month) == (2016, 12, 2017, 1)
    for bad in ("2016-13", "2016-1", "16-01", "2016/01"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            parse_span(bad)
