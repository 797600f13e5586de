"""The data gate on real taxi spans: a clean span passes, each kind of bad span stops the run.

Each bad span is built from a real month of the sample with one problem put in; the failure must
name the offending column and rule in its summary. Runs the real TFDV (on Beam's DirectRunner) and
Great Expectations.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest

from tests.conftest import CONFIG_PATH, SAMPLE_CSV
from tfpipe.config import load_pipeline_config
from tfpipe.data.spans import span_of_timestamp
from tfpipe.stages.validate import ValidationFailed, run

SPAN, PREVIOUS = "2013-06", "2013-05"


def _span_rows(span: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(SAMPLE_CSV, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if span_of_timestamp(float(row["trip_start_timestamp"])) == span]
        return list(reader.fieldnames or []), rows


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def validation_config() -> str:
    return load_pipeline_config(CONFIG_PATH).validation.model_dump_json()


@pytest.fixture(scope="module")
def previous_span(tmp_path_factory) -> Path:
    header, rows = _span_rows(PREVIOUS)
    return _write(tmp_path_factory.mktemp("previous") / "trips.csv", header, rows)


def _validate(tmp_path: Path, config: str, previous: Path | None, *, span: str | None = SPAN) -> dict:
    return run(
        argparse.Namespace(
            examples_uri=str(tmp_path / "examples"),
            output_uri=str(tmp_path / "validation"),
            config=config,
            span=span,
            previous_uri=str(previous) if previous else None,
            serving_uri=None,
            splits_uri=None,
        )
    )


def _fails(tmp_path: Path, config: str, previous: Path | None) -> str:
    with pytest.raises(ValidationFailed) as raised:
        _validate(tmp_path, config, previous)
    message = str(raised.value)
    assert f"full report: {tmp_path / 'validation' / 'report.html'}" in message
    assert (tmp_path / "validation" / "report.html").exists(), "the report is written even when the data fails"
    return message


def test_a_clean_span_passes_with_its_report(tmp_path, validation_config, previous_span):
    header, rows = _span_rows(SPAN)
    _write(tmp_path / "examples" / "trips.csv", header, rows)
    result = _validate(tmp_path, validation_config, previous_span)
    assert result["passed"] is True and result["rows"] == len(rows)
    findings = json.loads((tmp_path / "validation" / "findings.json").read_text())
    assert [f for f in findings if f["severity"] == "error"] == []
    assert (tmp_path / "validation" / "expectations" / "data_docs" / "index.html").exists()
    assert "PASS" in (tmp_path / "validation" / "report.html").read_text()


def _mutated(mutate) -> tuple[list[str], list[dict[str, str]]]:
    header, rows = _span_rows(SPAN)
    return mutate(list(header), [dict(row) for row in rows])


def _text_in_fare(header, rows):
    for row in rows[::10]:
        row["fare"] = "twelve dollars"
    return header, rows


def _drop_column(header, rows):
    header.remove("trip_start_hour")
    return header, rows


def _rename_column(header, rows):
    header[header.index("fare")] = "fare_usd"
    for row in rows:
        row["fare_usd"] = row.pop("fare")
    return header, rows


def _missing_40_percent(header, rows):
    for index, row in enumerate(rows):
        if index % 5 < 2:
            row["trip_seconds"] = ""
    return header, rows


def _out_of_range(header, rows):
    for row in rows[:5]:
        row["trip_start_hour"] = "31"
    return header, rows


def _new_category(header, rows):
    for row in rows[:3]:
        row["payment_type"] = "Bitcoin"
    return header, rows


def _fare_shift(header, rows):
    for row in rows:
        row["fare"] = f"{float(row['fare']) * 2 + 5:.2f}"
    return header, rows


def _payment_flip(header, rows):
    swap = {"Cash": "Credit Card", "Credit Card": "Cash"}
    for row in rows:
        row["payment_type"] = swap.get(row["payment_type"], row["payment_type"])
    return header, rows


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_text_in_fare, "fare [schema/wrong_type]"),
        (_drop_column, "trip_start_hour [schema/schema_missing_column]"),
        (_rename_column, "fare [schema/schema_missing_column]"),
        (_missing_40_percent, "trip_seconds [schema/feature_type_low_fraction_present]"),
        (_out_of_range, "trip_start_hour [schema/int_type_big_int]"),
        (_new_category, "payment_type [schema/enum_type_unexpected_string_values]"),
        (_fare_shift, "fare [drift/jensen_shannon]"),
        (_payment_flip, "payment_type [drift/l_infinity]"),
    ],
    ids=[
        "text-in-numeric",
        "missing-column",
        "renamed-column",
        "40pct-missing",
        "out-of-range",
        "new-category",
        "fare-drift",
        "payment-mix-flip",
    ],
)
def test_a_bad_span_stops_with_the_column_named(tmp_path, validation_config, previous_span, mutate, expected):
    header, rows = _mutated(mutate)
    _write(tmp_path / "examples" / "trips.csv", header, rows)
    message = _fails(tmp_path, validation_config, previous_span)
    assert f"ERROR   {expected}" in message, message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "[file/empty_file]"),
        ("HEADER", "[file/no_rows]"),
        ("TRUNCATED", "[file/malformed_rows]"),
        ("SEMICOLONS", "separated by semicolons"),
    ],
    ids=["empty", "header-only", "truncated", "wrong-delimiter"],
)
def test_a_file_that_is_not_data_stops_with_the_file_named(tmp_path, validation_config, content, expected):
    header, rows = _span_rows(SPAN)
    data = tmp_path / "examples" / "trips.csv"
    _write(data, header, rows)
    text = data.read_text()
    if content == "HEADER":
        text = text.splitlines(keepends=True)[0]
    elif content == "TRUNCATED":
        text = text[: len(text) - len(text.splitlines()[-1]) // 2 - 1]  # cut the last row in half
    elif content == "SEMICOLONS":
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=";", lineterminator="\n").writerows(csv.reader(io.StringIO(text)))
        text = buffer.getvalue()
    else:
        text = content
    data.write_text(text)
    message = _fails(tmp_path, validation_config, None)
    assert expected in message and str(data) in message, message


def test_the_first_span_is_judged_without_drift(tmp_path, validation_config):
    header, rows = _span_rows(SPAN)
    _write(tmp_path / "examples" / "trips.csv", header, rows)
    assert _validate(tmp_path, validation_config, None)["passed"] is True


def test_too_few_rows_to_judge_drift_is_a_warning_not_a_pass_or_fail(tmp_path, validation_config):
    header, rows = _span_rows("2016-06")  # 66 trips
    _write(tmp_path / "examples" / "trips.csv", header, rows)
    previous = _write(tmp_path / "previous" / "trips.csv", *_span_rows("2016-05"))
    result = _validate(tmp_path, validation_config, previous, span="2016-06")
    findings = json.loads((tmp_path / "validation" / "findings.json").read_text())
    assert result["passed"] is True
    assert [f["rule"] for f in findings if f["check"] == "drift"] == ["too_few_examples"]


def test_a_rerun_writes_the_same_bytes(tmp_path, validation_config, previous_span):
    """Clearing the task reruns it into the same folder: same files, same content, nothing extra."""
    header, rows = _span_rows(SPAN)
    _write(tmp_path / "examples" / "trips.csv", header, rows)

    def tree() -> dict[str, bytes]:
        root = tmp_path / "validation"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    _validate(tmp_path, validation_config, previous_span)
    first = tree()
    _validate(tmp_path, validation_config, previous_span)
    assert tree() == first


def test_training_data_skewed_against_serving_data_names_the_feature(tmp_path, validation_config):
    """Serving data (the request log: no label, no tips) whose fares differ from training is skew."""
    header, rows = _span_rows(SPAN)
    _write(tmp_path / "examples" / "trips.csv", header, rows)
    serving_header = [name for name in header if name not in ("tips", "big_tipper")]
    _, serving_rows = _fare_shift(list(header), [dict(row) for row in rows])
    serving = _write(tmp_path / "serving" / "requests.csv", serving_header, serving_rows)
    with pytest.raises(ValidationFailed) as raised:
        run(
            argparse.Namespace(
                examples_uri=str(tmp_path / "examples"),
                output_uri=str(tmp_path / "validation"),
                config=validation_config,
                span=SPAN,
                previous_uri=None,
                serving_uri=str(serving),
                splits_uri=None,
            )
        )
    assert "ERROR   fare [skew/jensen_shannon]" in str(raised.value)
    assert "payment_type [skew" not in str(raised.value), "an unchanged feature is not reported"


def test_environments_require_the_label_in_training_data_only():
    """The schema's environments: serving data has no label or tips; training data must have both."""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    from tfpipe.validation.tfdv_checks import load_schema

    schema = load_schema(str(CONFIG_PATH.parent / "chicago_taxi" / "schema.pbtxt"))
    _, rows = _span_rows(SPAN)
    frame = pd.DataFrame(rows).drop(columns=["tips", "big_tipper"])
    for column in frame.columns:
        converted = pd.to_numeric(frame[column].replace("", None), errors="coerce")
        if column not in ("payment_type", "company"):
            frame[column] = converted
    statistics = tfdv.generate_statistics_from_dataframe(frame)
    serving = tfdv.validate_statistics(statistics, schema, environment="SERVING")
    training = tfdv.validate_statistics(statistics, schema, environment="TRAINING")
    assert not {"tips", "big_tipper"} & set(serving.anomaly_info)
    assert {"tips", "big_tipper"} <= set(training.anomaly_info)


def _splits(tmp_path: Path, train_mutation=None, eval_mutation=None) -> Path:
    """A splits folder as the split stage writes it: 2014 trains, 2015-06 validates, 2015-07..09 is held out."""
    root = tmp_path / "splits"
    files = {}
    for name, spans, mutate in (
        ("train", [f"2014-{m:02d}" for m in range(1, 13)], train_mutation),
        ("validation", ["2015-06"], None),
        ("eval", ["2015-07", "2015-08", "2015-09"], eval_mutation),
    ):
        header, rows = [], []
        for span in spans:
            header, span_rows = _span_rows(span)
            rows += span_rows
        if mutate is not None:
            header, rows = mutate(list(header), rows)
        _write(root / name / "part-00000-of-00001.csv", header, rows)
        files[name] = {"files": ["part-00000-of-00001.csv"], "rows": len(rows)}
    (root / "manifest.json").write_text(json.dumps({"trainable": True, "reason": "", "splits": files}))
    return root


def _validate_with_splits(tmp_path: Path, config: str, previous: Path, splits: Path) -> dict:
    header, rows = _span_rows(SPAN)
    _write(tmp_path / "examples" / "trips.csv", header, rows)
    return run(
        argparse.Namespace(
            examples_uri=str(tmp_path / "examples"),
            output_uri=str(tmp_path / "validation"),
            config=config,
            span=SPAN,
            previous_uri=str(previous),
            serving_uri=None,
            splits_uri=str(splits),
        )
    )


def test_clean_splits_pass_with_the_span(tmp_path, validation_config, previous_span):
    result = _validate_with_splits(tmp_path, validation_config, previous_span, _splits(tmp_path))
    assert result["passed"]
    findings = json.loads((tmp_path / "validation" / "findings.json").read_text())
    assert not [f for f in findings if f["severity"] == "error"]


def test_a_bad_older_span_in_the_training_split_stops_training_with_the_split_named(
    tmp_path, validation_config, previous_span
):
    with pytest.raises(ValidationFailed) as raised:
        _validate_with_splits(tmp_path, validation_config, previous_span, _splits(tmp_path, _text_in_fare))
    assert "ERROR   fare [schema/wrong_type]: training split:" in str(raised.value)


def test_an_evaluation_split_unlike_training_is_reported_as_skew(tmp_path, validation_config, previous_span):
    with pytest.raises(ValidationFailed) as raised:
        _validate_with_splits(
            tmp_path, validation_config, previous_span, _splits(tmp_path, eval_mutation=_payment_flip)
        )
    message = str(raised.value)
    assert "ERROR   payment_type [skew/l_infinity]: evaluation split:" in message
    assert "from the training split exceeds 0.200" in message


def test_splits_that_cannot_train_are_not_checked(tmp_path, validation_config, previous_span):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "manifest.json").write_text(json.dumps({"trainable": False, "reason": "not enough history"}))
    assert _validate_with_splits(tmp_path, validation_config, previous_span, splits)["passed"]
