"""Great Expectations rules on real trips, through a real GX Core context (no mocks)."""

from __future__ import annotations

import subprocess
import textwrap

import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from tests.conftest import SAMPLE_CSV
from tfpipe.data.spans import parse_span
from tfpipe.validation.expectations import ExpectationsConfig, run_expectations

SPAN = "2015-05"  # 424 real trips; no tip above 3 x fare that month
KEY = [
    "trip_start_timestamp",
    "pickup_latitude",
    "pickup_longitude",
    "dropoff_latitude",
    "dropoff_longitude",
    "trip_miles",
    "trip_seconds",
    "fare",
    "tips",
    "payment_type",
    "company",
]
CHICAGO_YAML = f"""
row_count: {{min: 20, max: 5000000}}
unique:
  - columns: [{", ".join(KEY)}]
    mostly: 0.99
at_most_multiple:
  - {{column: tips, of: fare, factor: 3.0, mostly: 0.99}}
freshness: {{column: trip_start_timestamp}}
non_negative: {{columns: [fare, tips, trip_miles, trip_seconds]}}
"""
CHICAGO = ExpectationsConfig.model_validate(yaml.safe_load(CHICAGO_YAML))
# The same rules with no tolerance, so that a single bad row fails.
STRICT = ExpectationsConfig.model_validate(
    {
        "row_count": {"min": 20},
        "unique": [{"columns": KEY}],
        "at_most_multiple": [{"column": "tips", "of": "fare", "factor": 3.0}],
        "freshness": {"column": "trip_start_timestamp"},
        "non_negative": {"columns": ["fare", "tips", "trip_miles", "trip_seconds"]},
    }
)
PAIR = "expect_column_pair_values_a_to_be_greater_than_b"
BETWEEN = "expect_column_values_to_be_between"


@pytest.fixture(scope="module")
def month() -> pd.DataFrame:
    trips = pd.read_csv(SAMPLE_CSV)
    start, end = (int(moment.timestamp()) for moment in parse_span(SPAN))
    inside = trips[(trips.trip_start_timestamp >= start) & (trips.trip_start_timestamp < end)]
    return inside.reset_index(drop=True)


def _run(frame, tmp_path, config=STRICT, span=SPAN):
    return run_expectations(
        frame, config, span=parse_span(span) if span else None, output_dir=tmp_path / "expectations"
    )


def _only(outcome, rule, column):
    matches = [f for f in outcome.findings if f.rule == rule and f.column == column]
    assert len(matches) == 1, [f.line() for f in outcome.findings]
    return matches[0]


def test_a_clean_month_of_real_trips_passes(month, tmp_path):
    columns = list(month.columns)
    outcome = _run(month, tmp_path, CHICAGO)
    assert outcome.success and outcome.findings == []
    # 1 row count + 1 uniqueness + 1 tips/fare + 1 freshness + 4 non-negative columns
    assert outcome.statistics["evaluated_expectations"] == 8
    assert outcome.statistics["successful_expectations"] == 8
    assert outcome.statistics["rows"] == len(month) == 424
    assert list(month.columns) == columns  # the helper column went to a copy


def test_too_few_rows(month, tmp_path):
    outcome = _run(month.head(5), tmp_path)
    finding = _only(outcome, "expect_table_row_count_to_be_between", None)
    assert not outcome.success and finding.severity == "error" and finding.check == "expectation"
    assert finding.message == "5 rows, expected at least 20"


def test_a_duplicated_row(month, tmp_path):
    frame = pd.concat([month, month.iloc[[7]]], ignore_index=True)
    outcome = _run(frame, tmp_path)
    finding = _only(outcome, "expect_compound_columns_to_be_unique", ",".join(KEY))
    assert not outcome.success
    # Both copies are unexpected.
    assert finding.message.startswith(f"2 of {len(frame)} rows (0.471%) share (trip_start_timestamp,")
    assert finding.details["unexpected_count"] == 2
    assert f"trip_start_timestamp={month.trip_start_timestamp[7]}" in finding.message


def test_a_duplicated_row_within_mostly_passes(month, tmp_path):
    frame = pd.concat([month, month.iloc[[7]]], ignore_index=True)
    assert _run(frame, tmp_path, CHICAGO).findings == []  # 2 of 425 rows is under the 1% allowed


def test_tips_above_three_times_the_fare(month, tmp_path):
    frame = month.copy()
    frame.loc[3, ["fare", "tips"]] = [4.25, 13.0]
    outcome = _run(frame, tmp_path)
    finding = _only(outcome, PAIR, "tips")
    assert not outcome.success
    assert finding.message == f"1 of {len(frame)} rows (0.236%) have tips > fare * 3; e.g. tips=13 > 12.75"
    assert finding.details["kwargs"]["column_A"] == "fare * 3"


def test_tips_equal_to_three_times_the_fare_pass(month, tmp_path):
    frame = month.copy()
    frame.loc[3, ["fare", "tips"]] = [4.25, 12.75]
    assert _run(frame, tmp_path).findings == []


def test_a_trip_outside_the_span(month, tmp_path):
    start, end = (int(moment.timestamp()) for moment in parse_span(SPAN))
    frame = month.copy()
    frame.loc[0, "trip_start_timestamp"] = start  # the span includes its start ...
    frame.loc[1, "trip_start_timestamp"] = end  # ... and not its end
    outcome = _run(frame, tmp_path)
    finding = _only(outcome, BETWEEN, "trip_start_timestamp")
    assert not outcome.success
    assert finding.message == (
        f"1 of {len(frame)} rows (0.236%) are outside the span [{start}, {end}) = "
        f"[2015-05-01 00:00, 2015-06-01 00:00) UTC; e.g. {end}"
    )


def test_without_a_span_freshness_is_not_checked(month, tmp_path):
    frame = month.copy()
    frame.loc[1, "trip_start_timestamp"] = 0
    outcome = _run(frame, tmp_path, span=None)
    assert outcome.success and outcome.statistics["evaluated_expectations"] == 7


def test_a_negative_fare(month, tmp_path):
    frame = month.copy()
    frame.loc[5, "fare"] = -2.5
    outcome = _run(frame, tmp_path)
    finding = _only(outcome, BETWEEN, "fare")
    assert not outcome.success
    assert finding.message == f"1 of {len(frame)} rows (0.236%) are negative (expected >= 0); e.g. -2.5"
    assert finding.details["examples"] == [-2.5]


def test_a_failing_warning_rule_still_succeeds(month, tmp_path):
    config = ExpectationsConfig.model_validate(
        {**CHICAGO.model_dump(), "row_count": {"min": 1000, "severity": "warning"}}
    )
    outcome = _run(month, tmp_path, config)
    finding = _only(outcome, "expect_table_row_count_to_be_between", None)
    assert finding.severity == "warning" and outcome.success
    assert finding.message == "424 rows, expected at least 1000"

    frame = month.copy()
    frame.loc[5, "fare"] = -2.5
    assert not _run(frame, tmp_path / "again", config).success  # an error still fails


def test_a_missing_column_is_reported_not_checked(month, tmp_path):
    outcome = _run(month.drop(columns=["tips"]), tmp_path)
    assert not outcome.success
    assert {(f.rule, f.column) for f in outcome.findings} == {
        ("expect_compound_columns_to_be_unique", ",".join(KEY)),
        (PAIR, "tips"),
        (BETWEEN, "tips"),
    }
    assert all("column tips is missing" in f.message for f in outcome.findings)


def test_data_docs_are_written_under_output_dir(month, tmp_path):
    outcome = _run(month, tmp_path)
    index = tmp_path / "expectations" / "data_docs" / "index.html"
    assert outcome.data_docs_uri == str(index) and index.is_file()
    assert "chicago_taxi" in index.read_text()
    pages = list((index.parent / "validations").rglob("*.html"))
    assert len(pages) == 1 and "tips" in pages[0].read_text()


def test_nothing_is_written_outside_output_dir(tmp_path, ml_python):
    """A fresh interpreter, so that GX's import-time setup is covered too."""
    home, temp, cwd, output = (tmp_path / name for name in ("home", "tmp", "cwd", "out"))
    for folder in (home, temp, cwd):
        folder.mkdir()
    script = textwrap.dedent(
        f"""
        import pathlib, pandas, yaml
        from tfpipe.data.spans import parse_span
        from tfpipe.validation.expectations import ExpectationsConfig, run_expectations
        frame = pandas.read_csv({str(SAMPLE_CSV)!r}).head(200)
        config = ExpectationsConfig.model_validate(yaml.safe_load({CHICAGO_YAML!r}))
        outcome = run_expectations(frame, config, span=parse_span("2015-05"), output_dir=pathlib.Path({str(output)!r}))
        assert not outcome.success and outcome.data_docs_uri
        """
    )
    env = {"HOME": str(home), "TMPDIR": str(temp), "PATH": "/usr/bin:/bin", "GX_ANALYTICS_ENABLED": "false"}
    subprocess.run([ml_python, "-c", script], cwd=cwd, env=env, check=True, timeout=300)
    assert (output / "data_docs" / "index.html").is_file()
    assert [list(folder.iterdir()) for folder in (home, temp, cwd)] == [[], [], []]


def test_the_chicago_taxi_yaml_shape_and_its_checks():
    assert CHICAGO.unique[0].columns == KEY and CHICAGO.unique[0].severity == "error"
    assert CHICAGO.at_most_multiple[0].mostly == 0.99 and CHICAGO.non_negative.mostly == 1.0
    assert ExpectationsConfig().model_dump() == {
        "row_count": None,
        "unique": [],
        "at_most_multiple": [],
        "freshness": None,
        "non_negative": None,
    }
    for bad in (
        {"row_count": {}},
        {"row_count": {"min": 10, "max": 5}},
        {"row_count": {"min": 1, "severity": "fatal"}},
        {"unique": [{"columns": []}]},
        {"at_most_multiple": [{"column": "tips", "of": "fare", "factor": 0}]},
        {"non_negative": {"columns": ["fare"], "mostly": 1.5}},
        {"freshness": {"colum": "trip_start_timestamp"}},
    ):
        with pytest.raises(ValidationError):
            ExpectationsConfig.model_validate(bad)
