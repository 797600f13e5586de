"""Run chicago_taxi_training end to end on the demo's span, then print what ran and where it wrote.

Called by `make demo`, which prepares the environment (virtual environments, landing area, Airflow
database) and exports the settings this script relies on (AIRFLOW_HOME and friends).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tfpipe.artifacts import run_key

DAG_ID = "chicago_taxi_training"
# A manual run takes the month before its logical date as its data interval: this is span 2016-12,
# the newest month of the taxi sample.
LOGICAL_DATE = "2017-01-01"
ROOT = Path(__file__).resolve().parent.parent
PROGRESS = re.compile(r"\[DAG TEST\] (starting|end task) task_id=(\S+)|INFO \[tfpipe[.\w]*\] (.*?) \[airflow")
FINISHED = re.compile(r"DagRun Finished: .*?run_id=([^,]+),.*?state=(\w+)")


def airflow(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "airflow", *args], check=True, capture_output=True, text=True).stdout


def main() -> int:
    log_path = ROOT / "state" / "demo" / "last_run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"Running {DAG_ID} for span 2016-12 (airflow dags test {DAG_ID} {LOGICAL_DATE}); full log: {log_path}")
    started = time.monotonic()
    run_id = state = None
    with (
        open(log_path, "w") as log,
        subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, LOGICAL_DATE],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if match := PROGRESS.search(line):
                if match.group(1):
                    verb = "started" if match.group(1) == "starting" else "finished"
                    print(f"  {verb:>8} {match.group(2)}", flush=True)
                else:
                    print(f"           {match.group(3)}", flush=True)
            if match := FINISHED.search(line):
                run_id, state = match.group(1), match.group(2)
    elapsed = time.monotonic() - started
    if process.returncode != 0 or run_id is None:
        print(
            f"\nThe run failed ({state or 'no run'}), exit code {process.returncode}; see {log_path}", file=sys.stderr
        )
        return 1

    tasks = json.loads(airflow("tasks", "states-for-dag-run", DAG_ID, run_id, "-o", "json"))
    print(f"\n{DAG_ID}: run {run_id} {state} in {elapsed:.0f} s\n")
    print(f"  {'task':<22} {'state':<9} {'seconds':>8}  stage figures")
    results_dir = None
    for task in tasks:
        map_index = _map_index(task.get("map_index"))
        name = task["task_id"] if map_index < 0 else f"{task['task_id']}[{map_index}]"
        result_file = _result_file(task["task_id"], run_id, map_index)
        result = json.loads(result_file.read_text()) if result_file and result_file.exists() else {}
        results_dir = result_file.parent if result_file else results_dir
        usage = result.get("usage", {})
        # Scalars only: lists (epochs, workers) and nested records stay in the result file.
        figures = ", ".join(
            f"{k}={round(v, 4) if isinstance(v, float) else v}"
            for k, v in result.items()
            if not k.endswith("_uri") and isinstance(v, str | int | float) and len(str(v)) <= 40
        )
        seconds = usage.get("wall_seconds")
        print(f"  {name:<22} {task['state']:<9} {seconds if seconds is not None else '-':>8}  {figures}")
        for key, value in result.items():
            if key.endswith("_uri"):
                print(f"  {'':<22} {key}: {value}")
    print("\nArtifacts of this run:", results_dir.parent if results_dir else "(none)")
    print("Airflow UI on this state: make airflow  (then http://127.0.0.1:8080, DAG chicago_taxi_training)")
    return 0


def _map_index(value: object) -> int:
    """The CLI prints an unmapped task's map index as -1, "" or nothing."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return -1


def _result_file(task_id: str, run_id: str, map_index: int = -1) -> Path | None:
    root = Path(os.environ.get("TFPIPE_ARTIFACT_ROOT", ROOT / "state" / "artifacts"))
    key = run_key(run_id)
    name = task_id if map_index < 0 else f"{task_id}-{map_index}"
    matches = sorted(root.glob(f"chicago_taxi/span=*/run={key}/_stage_results/{name}.json"))
    return matches[0] if matches else None


if __name__ == "__main__":
    raise SystemExit(main())
