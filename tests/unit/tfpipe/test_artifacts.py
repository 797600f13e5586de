from __future__ import annotations

import json

import pytest

from tfpipe import artifacts
from tfpipe.artifacts import ArtifactLayout, run_key


def test_run_key_is_path_safe_and_stable():
    run_id = "scheduled__2013-01-01T00:00:00+00:00"
    assert run_key(run_id) == "scheduled__2013-01-01T00_00_00_00_00"
    assert run_key(run_id) == run_key(run_id)
    assert "/" not in run_key("manual__a/b/../c")
    with pytest.raises(ValueError):
        run_key("///")


def test_layout_partitions_by_pipeline_span_and_run():
    layout = ArtifactLayout("gs://bucket/root/", "chicago_taxi")
    assert layout.output_uri("2013-01", "backfill__2013-01-01T00:00:00+00:00", "examples") == (
        "gs://bucket/root/chicago_taxi/span=2013-01/run=backfill__2013-01-01T00_00_00_00_00/examples"
    )


def test_staged_output_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "out"
    with artifacts.staged_output(str(target)) as folder:
        (folder / "a.txt").write_text("first")
        (folder / "stale.txt").write_text("only in the first run")
    with artifacts.staged_output(str(target)) as folder:
        (folder / "a.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (target / "a.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging or retired folders are left behind"


def test_staged_output_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "out"
    with artifacts.staged_output(str(target)) as folder:
        (folder / "a.txt").write_text("good")
    with pytest.raises(RuntimeError), artifacts.staged_output(str(target)) as folder:
        (folder / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_json_is_whole_and_readable_by_others(tmp_path):
    path = tmp_path / "nested" / "result.json"
    artifacts.write_json(str(path), {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert path.stat().st_mode & 0o044, "published files are not private temp files"
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_list_files_sorted_skips_hidden_and_folders(tmp_path):
    for name in ("b.csv", "a.csv", ".hidden.csv", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub.csv").mkdir()
    assert artifacts.list_files(str(tmp_path), ".csv") == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
