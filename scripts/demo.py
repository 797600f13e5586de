"""Run chicago_taxi_training end to end, model server and canary rollout included, then print a summary.

Called by `make demo`, which prepares the environment (virtual environments, landing area, Airflow
database) and exports the settings this script relies on (AIRFLOW_HOME and friends).

1. Start the model server (TF Serving's REST API) on 127.0.0.1:8501 with a fresh admin token; it serves
   the registry's champion, or nothing yet on a first demo.
2. With no champion yet, run span 2016-11 first: its blessed model is the first deployment (stable at
   100%, no canary: there is nothing to compare it with) and becomes the champion.
3. Replay held-out 2016 trips against the server (a separate process, 100 requests/s) while span 2016-12
   runs: its candidate rolls out as a canary, analysed on that live traffic at each step, and is promoted.
4. Print every task with its figures, the rollout, and what the replayed users saw.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tfpipe.artifacts import run_key

DAG_ID = "chicago_taxi_training"
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "dags" / "configs" / "chicago_taxi.yaml"
STATE = ROOT / "state" / "demo"
ML_PYTHON = os.environ.get("TFPIPE_ML_PYTHON", str(ROOT / ".venv-ml" / "bin" / "python"))
# A manual run takes the month before its logical date as its data interval.
FIRST_DEPLOYMENT = ("2016-12-01", "2016-11")
CANARY = ("2017-01-01", "2016-12")
REPLAY_RATE = 100
PROGRESS = re.compile(r"\[DAG TEST\] (starting|end task) task_id=(\S+)|INFO \[tfpipe[.\w]*\] (.*?) \[airflow")
# The rollout's own log lines worth showing as it goes.
ROLLOUT = re.compile(r"((?:analysis at \d+%|deployment (?:before|at|after)|nothing serves|rolled back|promoted)[^\[]*)")
FINISHED = re.compile(r"DagRun Finished: .*?run_id=([^,]+),.*?state=(\w+)")


def airflow(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "airflow", *args], check=True, capture_output=True, text=True).stdout


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return 0


def _champion() -> str | None:
    """The registry's champion version, or None (asked in the ML runtime, where MLflow is)."""
    script = (
        "import sys; from tfpipe.config import load_pipeline_config; "
        "from tfpipe.registry.mlflow_registry import ModelRegistry; "
        "c = load_pipeline_config(sys.argv[1]); "
        "b = ModelRegistry(c.registry.tracking_uri, c.registry.artifact_root, c.registry.experiment)"
        ".find_baseline(c.evaluation.model_name); "
        "print('champion=' + (b.version if b.state == 'champion' else ''))"
    )
    done = subprocess.run([ML_PYTHON, "-c", script, str(CONFIG)], capture_output=True, text=True, check=True)
    found = [line for line in done.stdout.splitlines() if line.startswith("champion=")]
    return found[-1].removeprefix("champion=") or None if found else None


class ModelServer:
    """The demo's model server process, with its own admin token and the Airflow connection to it."""

    def __init__(self, champion: str | None) -> None:
        port = 8501 if _port_is_free(8501) else _free_port()
        self.url = f"http://127.0.0.1:{port}"
        token = secrets.token_urlsafe(24)
        # The DAG's tasks reach the server through this connection; the server reads the same token.
        os.environ["AIRFLOW_CONN_TFPIPE_MODEL_SERVER"] = f"http://:{token}@127.0.0.1:{port}"
        self.log_path = STATE / "model_server.log"
        argv = [ML_PYTHON, "-m", "tfpipe", "serve", "--config", str(CONFIG), "--host", "127.0.0.1"]
        argv += ["--port", str(port)] + (["--from-registry", "champion"] if champion else [])
        self.process = subprocess.Popen(
            argv,
            stdout=open(self.log_path, "w"),  # noqa: SIM115 - the server's whole life
            stderr=subprocess.STDOUT,
            env={**os.environ, "TFPIPE_SERVING_ADMIN_TOKEN": token, "TF_CPP_MIN_LOG_LEVEL": "2"},
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        ready_path = "/readyz" if champion else "/healthz"
        while _get(self.url + ready_path) != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the model server did not start; see {self.log_path}")
            time.sleep(0.5)
        serving = f"the champion, version {champion}" if champion else "no model yet"
        note = "" if port == 8501 else " (8501 is taken)"
        print(f"Model server at {self.url}{note}, serving {serving}; log: {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def held_out_trips() -> Path:
    """The 2016 trips (held out of every model's training window) as one CSV to replay."""
    landing = Path(os.environ.get("TFPIPE_LANDING_ROOT", ROOT / "state" / "landing")) / "chicago_taxi"
    files = sorted(landing.glob("span=2016-*/*.csv"))
    target = STATE / "replay_2016.csv"
    with open(target, "w", newline="") as out:
        writer = None
        for path in files:
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader)
                if writer is None:
                    writer = csv.writer(out)
                    writer.writerow(header)
                writer.writerows(reader)
    return target


class Replay:
    """The load generator in its own process, replaying held-out trips until stopped."""

    def __init__(self, server: ModelServer) -> None:
        self.report = STATE / "replay_report.json"
        self.stop_file = STATE / "replay.stop"
        self.stop_file.unlink(missing_ok=True)
        self.report.unlink(missing_ok=True)
        argv = [ML_PYTHON, "-m", "tfpipe.serving.loadgen", "--url", server.url, "--csv", str(held_out_trips())]
        argv += ["--rate", str(REPLAY_RATE), "--duration", "3600", "--stop-file", str(self.stop_file)]
        argv += ["--report", str(self.report)]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=open(STATE / "replay.log", "w"),  # noqa: SIM115
        )
        print(f"Replaying held-out 2016 trips at {REPLAY_RATE} requests/s from a separate process")

    def stop(self) -> dict:
        self.stop_file.touch()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait()
        return json.loads(self.report.read_text()) if self.report.exists() else {}


def run_dag(logical_date: str, span: str, log_path: Path) -> tuple[str | None, str | None, float, int]:
    print(f"\nRunning {DAG_ID} for span {span} (airflow dags test {DAG_ID} {logical_date}); log: {log_path}")
    started = time.monotonic()
    run_id = state = None
    with (
        open(log_path, "w") as log,
        subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, logical_date],
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
            elif match := ROLLOUT.search(line):
                print(f"           {match.group(1).strip()}", flush=True)
            if match := FINISHED.search(line):
                run_id, state = match.group(1), match.group(2)
    return run_id, state, time.monotonic() - started, process.returncode


def summary(run_id: str, state: str, elapsed: float) -> None:
    tasks = json.loads(airflow("tasks", "states-for-dag-run", DAG_ID, run_id, "-o", "json"))
    print(f"\n{DAG_ID}: run {run_id} {state} in {elapsed:.0f} s\n")
    print(f"  {'task':<30} {'state':<9} {'seconds':>8}  stage figures")
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
        print(f"  {name:<30} {task['state']:<9} {seconds if seconds is not None else '-':>8}  {figures}")
        for key, value in result.items():
            if key.endswith("_uri"):
                print(f"  {'':<30} {key}: {value}")
    print("\nArtifacts of this run:", results_dir.parent if results_dir else "(none)")


def main() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    champion = _champion()
    server = ModelServer(champion)
    replay = None
    try:
        if champion is None:
            run_id, state, elapsed, code = run_dag(*FIRST_DEPLOYMENT, STATE / "first_deployment.log")
            if code != 0 or run_id is None:
                print(f"\nThe first deployment run failed ({state}); see {STATE / 'first_deployment.log'}")
                return 1
            print(f"  span {FIRST_DEPLOYMENT[1]}: {state} in {elapsed:.0f} s; its model serves and is the champion")
        replay = Replay(server)
        log_path = STATE / "last_run.log"
        run_id, state, elapsed, code = run_dag(*CANARY, log_path)
        seen = replay.stop()
        replay = None
        if code != 0 or run_id is None:
            print(f"\nThe run failed ({state or 'no run'}), exit code {code}; see {log_path}", file=sys.stderr)
            return 1
        summary(run_id, state, elapsed)
        if seen:
            versions = ", ".join(f"version {v}: {n}" for v, n in sorted(seen.get("versions", {}).items()))
            print(
                f"\nReplayed traffic: {seen.get('sent')} requests, {seen.get('failed')} failed "
                f"({versions}); p50 {seen.get('latency_ms', {}).get('p50')} ms, "
                f"p99 {seen.get('latency_ms', {}).get('p99')} ms"
            )
    finally:
        if replay is not None:
            replay.stop()
        server.stop()
    print("Model server with the new champion: make serve  (curl examples in the Makefile)")
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
