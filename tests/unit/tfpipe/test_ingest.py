from __future__ import annotations

import argparse
import csv
import json

import pytest

from tests.conftest import write_sample_rows
from tfpipe.errors import DataError, StageError
from tfpipe.stages import ingest


def _args(**overrides) -> argparse.Namespace:
    values = {"output_uri": None, "landing_uri": None, "span": None, "data_uri": None}
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.fixture
def landing(tmp_path):
    span = tmp_path / "landing" / "span=2014-03"
    span.mkdir(parents=True)
    write_sample_rows(span / "part-1.csv", 30)
    write_sample_rows(span / "part-0.csv", 20, start=30)
    return tmp_path / "landing"


def test_ingests_a_span_with_manifest_and_fingerprint(tmp_path, landing):
    output = tmp_path / "examples"
    result = ingest.run(_args(output_uri=str(output), landing_uri=str(landing), span="2014-03"))
    assert result["row_count"] == 50
    with open(output / "trips.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 51 and rows[0][0] == "pickup_community_area"
    manifest = json.loads((output / "manifest.json").read_text())
    assert [s["uri"].rsplit("/", 1)[1] for s in manifest["sources"]] == ["part-0.csv", "part-1.csv"]
    assert [s["rows"] for s in manifest["sources"]] == [20, 30]
    assert manifest["span"] == "2014-03" and manifest["fingerprint"] == result["fingerprint"]


def test_rerun_gives_the_same_bytes_and_no_extra_files(tmp_path, landing):
    output = tmp_path / "examples"
    args = _args(output_uri=str(output), landing_uri=str(landing), span="2014-03")
    ingest.run(args)
    first = {p.name: p.read_bytes() for p in output.iterdir()}
    ingest.run(args)
    assert {p.name: p.read_bytes() for p in output.iterdir()} == first


def test_data_uri_file_or_folder_overrides_the_span(tmp_path, landing):
    one = write_sample_rows(tmp_path / "one.csv", 7)
    result = ingest.run(
        _args(output_uri=str(tmp_path / "a"), data_uri=str(one), span="2014-03", landing_uri=str(landing))
    )
    assert result["row_count"] == 7
    result = ingest.run(_args(output_uri=str(tmp_path / "b"), data_uri=str(landing / "span=2014-03")))
    assert result["row_count"] == 50
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["span"] is None and manifest["data_uri"].endswith("span=2014-03")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file, expected a header row"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00garbage", "not UTF-8 text"),
    ],
)
def test_unreadable_files_are_named(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message) as raised:
        ingest.run(_args(output_uri=str(tmp_path / "out"), data_uri=str(bad)))
    assert str(bad) in str(raised.value)
    assert not (tmp_path / "out").exists(), "a failed ingest publishes nothing"


def test_files_whose_headers_disagree_are_refused(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_sample_rows(folder / "a.csv", 3)
    (folder / "b.csv").write_text("fare,tips\n1,2\n")
    with pytest.raises(DataError, match=r"b.csv: header \['fare', 'tips'\] differs"):
        ingest.run(_args(output_uri=str(tmp_path / "out"), data_uri=str(folder)))


def test_missing_inputs_say_what_is_missing(tmp_path, landing):
    with pytest.raises(DataError, match="span 2014-04 has not landed"):
        ingest.run(_args(output_uri=str(tmp_path / "o"), landing_uri=str(landing), span="2014-04"))
    with pytest.raises(DataError, match=r"no such file or folder \(data_uri\)"):
        ingest.run(_args(output_uri=str(tmp_path / "o"), data_uri=str(tmp_path / "nope.csv")))
    with pytest.raises(StageError, match="nothing to ingest"):
        ingest.run(_args(output_uri=str(tmp_path / "o")))
    with pytest.raises(StageError, match="YYYY-MM"):
        ingest.run(_args(output_uri=str(tmp_path / "o"), landing_uri=str(landing), span="March"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match=r"folder has no .csv files"):
        ingest.run(_args(output_uri=str(tmp_path / "o"), data_uri=str(tmp_path / "emptydir")))
