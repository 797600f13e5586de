"""The time split: earlier spans train, the latest are held out, rows are dealt into shards, nothing is lost."""

from __future__ import annotations

import argparse
import csv
import json
import shutil

import pytest

from tests.conftest import CONFIG_PATH, SAMPLE_CSV
from tfpipe.config import SplitConfig, load_pipeline_config
from tfpipe.data import split
from tfpipe.data.landing import land_spans
from tfpipe.data.spans import shift_span, span_of_timestamp, spans_between
from tfpipe.errors import DataError
from tfpipe.stages import ingest


@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    root = tmp_path_factory.mktemp("landing")
    land_spans(SAMPLE_CSV, root, "trip_start_timestamp")
    return root


def _split(tmp_path, landing, span: str, config: SplitConfig | None = None, output: str = "splits") -> dict:
    examples = tmp_path / f"examples-{span}"
    if not examples.exists():
        ingest.run(argparse.Namespace(output_uri=str(examples), landing_uri=str(landing), span=span, data_uri=None))
    config = config or load_pipeline_config(CONFIG_PATH).training.split
    return split.run(
        argparse.Namespace(
            examples_uri=str(examples),
            landing_uri=str(landing),
            span=span,
            first_span="2013-01",
            config=config.model_dump_json(),
            label="big_tipper",
            timestamp_column="trip_start_timestamp",
            output_uri=str(tmp_path / output),
        )
    )


def _rows(folder) -> list[list[str]]:
    rows = []
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as handle:
            rows += list(csv.reader(handle))[1:]
    return rows


def test_span_arithmetic():
    assert shift_span("2016-12", 1) == "2017-01"
    assert shift_span("2016-01", -13) == "2014-12"
    assert spans_between("2015-11", "2016-02") == ["2015-11", "2015-12", "2016-01", "2016-02"]
    assert spans_between("2016-02", "2016-01") == []


def test_the_demo_span_trains_on_2013_to_2015_and_holds_out_2016(tmp_path, landing):
    result = _split(tmp_path, landing, "2016-12")
    manifest = json.loads((tmp_path / "splits" / "manifest.json").read_text())
    assert manifest["trainable"] and result["trainable"]
    assert manifest["splits"]["train"]["spans"] == ["2013-01", "2015-09"]
    assert manifest["splits"]["validation"]["spans"] == ["2015-10", "2015-12"]
    assert manifest["splits"]["eval"]["spans"] == ["2016-01", "2016-12"]
    # Every trip of the sample lands in exactly one split; none is lost or doubled.
    assert result["train_rows"] + result["validation_rows"] + result["eval_rows"] == 15_002
    with open(SAMPLE_CSV, newline="") as handle:
        header = next(csv.reader(handle))
    at = header.index("trip_start_timestamp")
    for name, (first, last) in (("train", ("2013-01", "2015-09")), ("eval", ("2016-01", "2016-12"))):
        rows = _rows(tmp_path / "splits" / name)
        assert len(rows) == result[f"{name}_rows"]
        spans = {span_of_timestamp(float(row[at])) for row in rows}
        assert min(spans) == first and max(spans) == last


def test_training_splits_are_dealt_evenly_into_shards_with_a_header_each(tmp_path, landing):
    _split(tmp_path, landing, "2016-12")
    files = sorted((tmp_path / "splits" / "train").glob("*.csv"))
    assert [f.name for f in files] == [f"part-{i:05d}-of-00008.csv" for i in range(8)]
    counts = []
    for path in files:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0][0] == "pickup_community_area"
        counts.append(len(rows) - 1)
    assert max(counts) - min(counts) <= 1
    assert [f.name for f in (tmp_path / "splits" / "eval").glob("*.csv")] == ["trips.csv"]


def test_a_rerun_writes_identical_bytes(tmp_path, landing):
    first = _split(tmp_path, landing, "2016-12", output="a")
    second = _split(tmp_path, landing, "2016-12", output="b")
    assert first["fingerprint"] == second["fingerprint"]
    for path in sorted((tmp_path / "a").rglob("*.csv")):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_an_early_span_is_not_trainable_and_says_why(tmp_path, landing):
    result = _split(tmp_path, landing, "2013-06")
    assert result["trainable"] is False
    assert "not enough history to train at span 2013-06" in result["reason"]
    assert "train and validation split" in result["reason"]
    assert json.loads((tmp_path / "splits" / "manifest.json").read_text())["trainable"] is False


def test_a_window_without_landed_spans_for_a_split_is_not_trainable(tmp_path, landing):
    partial = tmp_path / "partial-landing"
    shutil.copytree(landing, partial)
    for span in spans_between("2015-10", "2015-12"):
        shutil.rmtree(partial / f"span={span}")
    result = _split(tmp_path, partial, "2016-12")
    assert result["trainable"] is False
    assert result["reason"] == "no rows fall in the validation split (validation 2015-10..2015-12)"


def test_a_window_option_limits_the_training_spans(tmp_path, landing):
    result = _split(tmp_path, landing, "2016-12", SplitConfig(holdout_spans=12, validation_spans=3, window_spans=24))
    manifest = json.loads((tmp_path / "splits" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["spans"] == ["2015-01", "2015-09"]
    assert manifest["dropped_rows"]["outside_window"] == 0  # earlier spans are not even read
    assert result["train_rows"] < 4000


def test_a_span_file_with_a_different_header_is_refused_by_name(tmp_path, landing):
    broken = tmp_path / "broken-landing"
    shutil.copytree(landing, broken)
    path = broken / "span=2014-05" / "trips.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace("fare", "fare_usd"), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"span=2014-05/trips.csv: header .* differs"):
        _split(tmp_path, broken, "2016-12")
    assert not (tmp_path / "splits").exists(), "nothing is published when the split fails"


def test_the_window_must_leave_spans_to_train_on():
    with pytest.raises(ValueError, match="window_spans"):
        SplitConfig(holdout_spans=12, validation_spans=3, window_spans=15)
