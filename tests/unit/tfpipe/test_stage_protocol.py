"""The stage command line as the Airflow side sees it: one result line, or one error line and an exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_sample_rows
from tfpipe.stages import ERROR_PREFIX, RESULT_PREFIX


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfpipe", *argv], capture_output=True, text=True, timeout=120)


def _ingest(source: Path, output: Path, result_file: Path) -> subprocess.CompletedProcess[str]:
    return _run("ingest", "--data-uri", str(source), "--output-uri", str(output), "--result-file", str(result_file))


def test_success_prints_one_result_line_and_writes_the_result_file(tmp_path):
    source = write_sample_rows(tmp_path / "in.csv", 12)
    done = _ingest(source, tmp_path / "out", tmp_path / "result.json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(RESULT_PREFIX)
    result = json.loads(lines[0][len(RESULT_PREFIX) :])
    assert result["row_count"] == 12
    assert set(result["usage"]) == {"wall_seconds", "cpu_seconds", "peak_rss_mib"}
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert "stage ingest finished" in done.stderr


def test_expected_failure_exits_2_with_the_problem_named(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    done = _run("ingest", "--data-uri", str(empty), "--output-uri", str(tmp_path / "out"))
    assert done.returncode == 2
    error = json.loads(done.stdout.strip().removeprefix(ERROR_PREFIX))
    assert error["error"] == "DataError" and str(empty) in error["message"] and "empty file" in error["message"]
    assert "Traceback" not in done.stderr, "an expected failure needs no traceback"


def test_a_crash_exits_1_with_its_traceback(tmp_path):
    # A result file under a regular file cannot be written: an unexpected error, not a data problem.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    source = write_sample_rows(tmp_path / "in.csv", 3)
    done = _ingest(source, tmp_path / "out", blocker / "result.json")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert json.loads(done.stdout.strip().removeprefix(ERROR_PREFIX))["error"] in {
        "FileExistsError",
        "NotADirectoryError",
    }


def test_unknown_stage_and_missing_arguments_are_usage_errors():
    done = _run("train-everything")
    assert done.returncode == 2 and "invalid choice: 'train-everything'" in done.stderr
    done = _run("ingest")
    assert done.returncode == 2 and "--output-uri" in done.stderr


def test_a_light_stage_does_not_import_tensorflow(tmp_path):
    source = write_sample_rows(tmp_path / "in.csv", 3)
    heavy = ("tensorflow", "apache_beam", "tensorflow_data_validation")
    code = (
        f"import sys; sys.argv = ['tfpipe', 'ingest', '--data-uri', {str(source)!r}, '--output-uri', "
        f"{str(tmp_path / 'out')!r}]; from tfpipe.stages import main; main();"
        f"print('LOADED', sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOADED []" in done.stdout, done.stdout + done.stderr
