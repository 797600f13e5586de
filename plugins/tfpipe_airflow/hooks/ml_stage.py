"""Run a tfpipe ML stage as a local subprocess of the ML runtime's Python.

The Airflow runtime never imports TensorFlow: it starts `python -m tfpipe <stage> ...` in the ML
virtual environment, streams every line the stage prints into the task log as it comes, and reads
the stage's one-line JSON result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from tfpipe.stages import ERROR_PREFIX, RESULT_PREFIX

# Stages run TensorFlow through tf-keras (TFMA needs it); unbuffered output so progress shows live.
STAGE_ENVIRONMENT = {
    "PYTHONUNBUFFERED": "1",
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "1",
    "TFPIPE_LOG_PLAIN": "1",
}
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
# A stage exits with this code for an expected failure (bad data, bad arguments): retrying the same
# input cannot help, so the task fails without using up its retries.
EXPECTED_FAILURE_EXIT_CODE = 2


class MLStageFailed(AirflowException):
    """The stage crashed or was killed; a retry may help."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


class MLStageRejected(AirflowFailException):
    """The stage refused its input (bad data, bad arguments); a retry of the same input cannot help.

    `details` holds what the stage left behind for a person, such as the report explaining why.
    """

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


def stage_argv(arguments: Mapping[str, Any]) -> list[str]:
    """{"output_uri": "x", "dry_run": True} -> ["--output-uri", "x", "--dry-run"]; None and "" are left out."""
    argv: list[str] = []
    for key, value in arguments.items():
        if value is None or value == "" or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, dict | list):
            argv += [flag, json.dumps(value, sort_keys=True)]
        else:
            argv += [flag, str(value)]
    return argv


class LocalMLStageHook(BaseHook):
    """Runs stages with the ML runtime's interpreter on this machine (the embedded default)."""

    hook_name = "tfpipe local ML stage"

    def __init__(self, python: str, extra_env: Mapping[str, str] | None = None, kill_grace_seconds: float = 10.0):
        super().__init__()
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.kill_grace_seconds = kill_grace_seconds
        self._process: subprocess.Popen[str] | None = None

    def command(self, stage: str, argv: list[str]) -> list[str]:
        return [self.python, "-m", "tfpipe", stage, *argv]

    def _check_interpreter(self) -> None:
        found = (
            shutil.which(self.python)
            if "/" not in self.python
            else (self.python if os.access(self.python, os.X_OK) else None)
        )
        if not found:
            raise MLStageRejected(
                f"ML runtime interpreter {self.python!r} not found: run `make install`, or set execution.local.python "
                "in the pipeline config (TFPIPE_ML_PYTHON)"
            )

    def _log_line(self, line: str) -> None:
        """Log a stage's output line at the level the stage logged it (stage lines start with it)."""
        level = _LEVELS.get(line.split(" ", 1)[0], logging.INFO)
        self.log.log(level, "%s", line)

    def run(self, stage: str, argv: list[str], log_line: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Run one stage to completion; return its result or raise with its error message."""
        self._check_interpreter()
        log_line = log_line or self._log_line
        env = {**os.environ, **STAGE_ENVIRONMENT, **self.extra_env}
        command = self.command(stage, argv)
        self.log.info("Running ML stage: %s", subprocess.list2cmdline(command))
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        tail: list[str] = []
        # Its own session, so on_kill can stop the stage and every process it started (Beam workers).
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            start_new_session=True,
        )
        try:
            assert self._process.stdout is not None
            for raw in self._process.stdout:
                line = raw.rstrip("\n")
                if line.startswith(RESULT_PREFIX):
                    result = json.loads(line[len(RESULT_PREFIX) :])
                elif line.startswith(ERROR_PREFIX):
                    error = json.loads(line[len(ERROR_PREFIX) :])
                else:
                    log_line(line)
                    tail = [*tail[-19:], line]
            returncode = self._process.wait()
        finally:
            self._process = None
        if returncode == 0 and result is not None:
            return result
        if error is not None:
            message = f"ML stage {stage!r} failed: {error['message']}"
            if returncode == EXPECTED_FAILURE_EXIT_CODE:
                raise MLStageRejected(message, error.get("details"))
            raise MLStageFailed(message, error.get("details"))
        if returncode < 0:
            raise MLStageFailed(f"ML stage {stage!r} was killed by signal {signal.Signals(-returncode).name}")
        last = tail[-1] if tail else "no output"
        raise MLStageFailed(f"ML stage {stage!r} exited with code {returncode} and no result; last output: {last}")

    def kill(self) -> None:
        """Stop a running stage and its children: SIGTERM, then SIGKILL after a grace period."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self.log.warning("Stopping ML stage process group %s", process.pid)
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=self.kill_grace_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
