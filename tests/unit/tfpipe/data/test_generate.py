from __future__ import annotations

import argparse
import csv
import datetime as dt
import tracemalloc
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_CSV, write_sample_rows
from tfpipe.data import generate
from tfpipe.data.spans import parse_span
from tfpipe.errors import DataError, StageError

CATEGORICAL = [
    "pickup_community_area",
    "pickup_census_tract",
    "dropoff_census_tract",
    "payment_type",
    "company",
    "dropoff_community_area",
]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _header(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return next(csv.reader(handle))


@pytest.fixture(scope="module")
def sample_rows() -> list[dict[str, str]]:
    return _rows(SAMPLE_CSV)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    """20,000 rows in small chunks (not a multiple of the block size), spread over 2015."""
    path = tmp_path_factory.mktemp("generated") / "trips.csv"
    result = generate.generate(
        str(SAMPLE_CSV), str(path), 20_000, seed=7, first_span="2015-01", last_span="2015-12", chunk_rows=3_001
    )
    return path, result


def test_header_row_count_and_result(generated):
    path, result = generated
    assert _header(path) == _header(SAMPLE_CSV)
    assert len(_rows(path)) == 20_000
    assert result == {
        "output_uri": str(path),
        "rows": 20_000,
        "seed": 7,
        "first_span": "2015-01",
        "last_span": "2015-12",
        "bytes": path.stat().st_size,
    }
    assert not [p for p in path.parent.iterdir() if p.name != path.name], "a temporary file was left behind"


def test_timestamps_fall_in_the_spans_and_their_parts_agree(generated):
    path, _ = generated
    start, _ = parse_span("2015-01")
    _, end = parse_span("2015-12")
    months = set()
    for row in _rows(path):
        seconds = int(row["trip_start_timestamp"])
        assert start.timestamp() <= seconds < end.timestamp()
        moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
        assert int(row["trip_start_month"]) == moment.month
        assert int(row["trip_start_hour"]) == moment.hour
        assert int(row["trip_start_day"]) == moment.isoweekday() % 7 + 1  # 1 = Sunday
        months.add(moment.month)
    assert months == set(range(1, 13))


def test_the_sample_uses_sunday_as_day_one_and_utc(sample_rows):
    # The convention the generator copies; if the sample changed, the generator must too.
    for row in sample_rows[:500]:
        moment = dt.datetime.fromtimestamp(int(row["trip_start_timestamp"]), tz=dt.UTC)
        assert int(row["trip_start_day"]) == moment.isoweekday() % 7 + 1
        assert int(row["trip_start_hour"]) == moment.hour


def test_label_follows_tips_and_fare_and_keeps_its_rate(generated, sample_rows):
    path, _ = generated
    rows = _rows(path)
    for row in rows:
        assert row["big_tipper"] == str(int(float(row["tips"]) > 0.2 * float(row["fare"])))
    rate = sum(row["big_tipper"] == "1" for row in rows) / len(rows)
    sample_rate = sum(row["big_tipper"] == "1" for row in sample_rows) / len(sample_rows)
    assert abs(rate - sample_rate) < 0.03


def test_missing_values_and_categories_match_the_sample(generated, sample_rows):
    path, _ = generated
    rows = _rows(path)
    for column in CATEGORICAL:
        assert {row[column] for row in rows} <= {row[column] for row in sample_rows}, column
    for column in ["company", "dropoff_census_tract", "dropoff_latitude", "pickup_census_tract"]:
        rate = sum(row[column] == "" for row in rows) / len(rows)
        sample_rate = sum(row[column] == "" for row in sample_rows) / len(sample_rows)
        assert abs(rate - sample_rate) < 0.03, column
    # Coordinates are empty together, as in the sample.
    assert all((row["dropoff_latitude"] == "") == (row["dropoff_longitude"] == "") for row in rows)


def test_numbers_are_jittered_plausibly(generated, sample_rows):
    path, _ = generated
    rows = _rows(path)
    for column in ["fare", "trip_miles", "trip_seconds", "tips"]:
        values = [float(row[column]) for row in rows if row[column]]
        sample_values = [float(row[column]) for row in sample_rows if row[column]]
        assert min(values) >= 0, column
        mean, sample_mean = sum(values) / len(values), sum(sample_values) / len(sample_values)
        assert abs(mean - sample_mean) < 0.1 * sample_mean, column
    for column in ["pickup_latitude", "dropoff_latitude", "pickup_longitude", "dropoff_longitude"]:
        values = [float(row[column]) for row in rows if row[column]]
        sample_values = [float(row[column]) for row in sample_rows if row[column]]
        assert min(sample_values) - 0.01 < min(values) and max(values) < max(sample_values) + 0.01, column
    # Values vary rather than repeat the sample's 15,002 rows.
    assert len({row["fare"] for row in rows}) > len({row["fare"] for row in sample_rows})
    assert all(float(row["fare"]) * 100 % 5 < 1e-6 or float(row["fare"]) * 100 % 5 > 5 - 1e-6 for row in rows)


def test_same_seed_same_bytes_other_seed_other_rows(tmp_path):
    paths = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        paths[name] = tmp_path / f"{name}.csv"
        generate.generate(str(SAMPLE_CSV), str(paths[name]), 2_000, seed=seed)
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    assert paths["a"].read_bytes() != paths["c"].read_bytes()


def test_chunk_size_does_not_change_the_output_and_shorter_runs_are_prefixes(tmp_path):
    one = tmp_path / "one.csv"
    generate.generate(str(SAMPLE_CSV), str(one), 10_000, seed=1, chunk_rows=10_000)
    for chunk_rows in [1, 999, 4096, 5_000, 50_000]:
        rows = 10_000 if chunk_rows > 1 else 300
        chunked = tmp_path / f"chunked-{chunk_rows}.csv"
        generate.generate(str(SAMPLE_CSV), str(chunked), rows, seed=1, chunk_rows=chunk_rows)
        expected = one.read_text().splitlines()[: rows + 1]
        assert chunked.read_text().splitlines() == expected, chunk_rows


def test_memory_is_bounded_by_the_chunk_not_the_row_count(tmp_path):
    sample = write_sample_rows(tmp_path / "sample.csv", 1_000)

    def peak(rows: int, chunk_rows: int) -> int:
        tracemalloc.start()
        try:
            generate.generate(str(sample), str(tmp_path / "out.csv"), rows, chunk_rows=chunk_rows)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # The peak includes reading the sample; chunks add to it, rows do not.
    small_chunks = peak(8_000, 500)
    more_rows_small_chunks = peak(16_000, 500)
    one_chunk = peak(16_000, 16_000)
    assert more_rows_small_chunks < small_chunks * 1.1
    assert one_chunk > more_rows_small_chunks * 3


def test_default_spans_are_the_samples_and_a_rerun_replaces_the_file(tmp_path):
    path = tmp_path / "deep" / "folder" / "trips.csv"
    first = generate.generate(str(SAMPLE_CSV), str(path), 500, seed=2)
    second = generate.generate(str(SAMPLE_CSV), str(path), 300, seed=2)
    assert (first["first_span"], first["last_span"]) == ("2013-01", "2016-12")
    assert second["rows"] == 300 and len(_rows(path)) == 300
    assert sorted(p.name for p in path.parent.iterdir()) == ["trips.csv"]


def test_empty_values_stay_empty_and_a_single_month_works(tmp_path):
    sample = write_sample_rows(tmp_path / "sample.csv", 3)  # the first trips have empty coordinates
    with open(sample, "a") as handle:
        handle.write(",,1,1,1,1400000000,,,,,,,,Cash,,,,,0\n")
    path = tmp_path / "out.csv"
    generate.generate(str(sample), str(path), 400, first_span="2016-02", last_span="2016-02")
    rows = _rows(path)
    empty_fare = [row for row in rows if row["fare"] == ""]
    assert empty_fare and all(row["tips"] == row["trip_miles"] == row["trip_seconds"] == "" for row in empty_fare)
    assert all(row["big_tipper"] == "0" for row in empty_fare)
    assert {row["trip_start_month"] for row in rows} == {"2"}


def test_the_stage_command_line(tmp_path):
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    path = tmp_path / "cli.csv"
    args = parser.parse_args(["--sample-uri", str(SAMPLE_CSV), "--output-uri", f"file://{path}", "--rows", "25"])
    assert (args.seed, args.first_span, args.last_span) == (0, None, None)
    result = generate.run(args)
    assert result["rows"] == 25 and result["output_uri"] == f"file://{path}" and len(_rows(path)) == 25


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"rows": 0}, StageError, r"--rows must be a positive"),
        ({"rows": -5}, StageError, r"--rows must be a positive"),
        ({"seed": -1}, StageError, r"--seed must be"),
        ({"chunk_rows": 0}, StageError, r"--chunk-rows must be a positive"),
        ({"first_span": "2015-13"}, StageError, r"--first-span '2015-13' is not of the form YYYY-MM"),
        ({"last_span": "2015/02"}, StageError, r"--last-span '2015/02' is not of the form YYYY-MM"),
        ({"first_span": "2016-03", "last_span": "2016-01"}, StageError, r"--first-span 2016-03 is after --last-span"),
        ({"sample_uri": "/nonexistent/trips.csv"}, DataError, r"sample file /nonexistent/trips.csv: no such file"),
        ({"output_uri": "gs://bucket/trips.csv"}, StageError, r"--output-uri gs://bucket/trips.csv: only local"),
    ],
)
def test_bad_arguments_are_named(tmp_path, changes, error, message):
    arguments = {"sample_uri": str(SAMPLE_CSV), "output_uri": str(tmp_path / "out.csv"), "rows": 10, **changes}
    with pytest.raises(error, match=message):
        generate.generate(**arguments)
    assert not list(tmp_path.iterdir()), "nothing is written when the arguments are bad"


def test_bad_samples_are_named(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty.csv: empty file"):
        generate.generate(str(empty), str(tmp_path / "out.csv"), 10)
    header_only = tmp_path / "header.csv"
    header_only.write_text("fare,trip_start_timestamp\n")
    with pytest.raises(DataError, match=r"header.csv: no rows"):
        generate.generate(str(header_only), str(tmp_path / "out.csv"), 10)
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("fare,tips\n1.0,0.5\n")
    with pytest.raises(DataError, match=r"no_time.csv: no column 'trip_start_timestamp'"):
        generate.generate(str(no_time), str(tmp_path / "out.csv"), 10)
    bad_number = tmp_path / "bad_number.csv"
    bad_number.write_text("fare,trip_start_timestamp\nabc,1400000000\n")
    with pytest.raises(DataError, match=r"bad_number.csv: line 2: fare='abc' is not a number"):
        generate.generate(str(bad_number), str(tmp_path / "out.csv"), 10)
    good = write_sample_rows(tmp_path / "good.csv", 5)
    with pytest.raises(StageError, match=r"good.csv is the sample file itself"):
        generate.generate(str(good), str(good), 10)
    assert not (tmp_path / "out.csv").exists()
