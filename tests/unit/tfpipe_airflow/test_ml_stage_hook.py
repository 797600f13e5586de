"""The local mode of RunMLStageOperator: a real subprocess of the ML runtime, streamed and parsed."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import write_sample_rows
from tfpipe_airflow.hooks.ml_stage import LocalMLStageHook, MLStageFailed, MLStageRejected, stage_argv


def _fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for the ML interpreter, to script output, timing and exit codes."""
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/bash\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_stage_argv():
    assert stage_argv({"output_uri": "/o", "span": "", "data_uri": None, "dry_run": True, "quiet": False, "n": 3}) == [
        "--output-uri",
        "/o",
        "--dry-run",
        "--n",
        "3",
    ]
    assert stage_argv({"slices": ["a", "b"]}) == ["--slices", '["a", "b"]']


def test_runs_a_real_stage_and_returns_its_result(tmp_path, ml_python):
    source = write_sample_rows(tmp_path / "in.csv", 9)
    lines: list[str] = []
    result = LocalMLStageHook(python=ml_python).run(
        "ingest", ["--data-uri", str(source), "--output-uri", str(tmp_path / "out")], log_line=lines.append
    )
    assert result["row_count"] == 9 and result["examples_uri"] == str(tmp_path / "out")
    assert any("stage ingest starting" in line for line in lines)
    assert not any(line.startswith("TFPIPE_") for line in lines), "protocol lines are parsed, not logged"


def test_an_expected_failure_is_not_retried_and_names_the_problem(tmp_path, ml_python):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(MLStageRejected, match=rf"ML stage 'ingest' failed: {empty}: empty file"):
        LocalMLStageHook(python=ml_python).run(
            "ingest", ["--data-uri", str(empty), "--output-uri", str(tmp_path / "o")]
        )


def test_output_is_streamed_while_the_stage_runs(tmp_path):
    python = _fake_python(
        tmp_path, 'echo "INFO first"; sleep 2; echo "INFO second"; echo \'TFPIPE_RESULT {"ok": 1}\'\n'
    )
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    result = LocalMLStageHook(python=python).run("any", [], log_line=lambda line: seen.append((time.monotonic(), line)))
    assert result == {"ok": 1}
    assert [line for _, line in seen] == ["INFO first", "INFO second"]
    assert seen[0][0] - started < 1.5, "the first line reached the log before the stage finished"


def test_a_crash_without_result_reports_its_last_output(tmp_path):
    python = _fake_python(tmp_path, 'echo "INFO working"; echo "Segmentation fault (core dumped)" >&2; exit 139\n')
    with pytest.raises(MLStageFailed, match=r"exited with code 139 and no result; last output: Segmentation fault"):
        LocalMLStageHook(python=python).run("any", [])


def test_missing_interpreter_says_how_to_fix_it(tmp_path):
    with pytest.raises(MLStageRejected, match="make install"):
        LocalMLStageHook(python=str(tmp_path / "no-python")).run("ingest", [])


def test_kill_stops_the_stage_and_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    python = _fake_python(tmp_path, f'sleep 300 & echo $! > {pid_file}; echo "INFO started"; wait\n')
    hook = LocalMLStageHook(python=python, kill_grace_seconds=2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            hook.run("any", [], log_line=lambda line: None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    hook.kill()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert errors and "killed by signal SIGTERM" in str(errors[0])
    assert _gone_or_zombie(child)


def _gone_or_zombie(pid: int) -> bool:
    """Dead: no process, or a zombie waiting for a reaper (there may be none in a container)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "State:\tZ" in status:
            return True
        time.sleep(0.05)
    return False


def test_a_rejected_stage_leaves_its_report_reachable_from_the_task(tmp_path):
    """The operator pushes what the failing stage left (its report URI) before failing the task."""
    from unittest.mock import MagicMock

    from tfpipe.config import ExecutionConfig
    from tfpipe_airflow.operators.ml_stage import RunMLStageOperator

    error = '{"stage": "validate", "message": "validation failed", "details": {"report_uri": "/r/report.html"}}'
    python = _fake_python(tmp_path, f"echo 'TFPIPE_ERROR {error}'; exit 2\n")
    operator = RunMLStageOperator(
        task_id="validate_examples",
        stage="validate",
        execution=ExecutionConfig.model_validate({"local": {"python": python}}),
    )
    ti = MagicMock()
    with pytest.raises(MLStageRejected, match="validation failed") as raised:
        operator.execute({"ti": ti})
    assert raised.value.details == {"report_uri": "/r/report.html"}
    ti.xcom_push.assert_called_once_with(key="report_uri", value="/r/report.html")
