"""A real Airflow on this machine for integration tests: api-server, scheduler and dag-processor.

Each test module gets its own AIRFLOW_HOME, landing area and artifact root under a temporary folder,
and its own metadata database on the machine's PostgreSQL (SQLite locks up under a scheduler and a
CLI writing at once; Postgres is also what production runs). Processes stop when it is done.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ML_PYTHON, PROJECT_ROOT, SAMPLE_CSV

AIRFLOW = [sys.executable, "-m", "airflow"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


POSTGRES_DSN = os.environ.get("TFPIPE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def land_sample(landing: Path) -> None:
    """The taxi sample split into monthly spans in a landing area, as the land-spans stage does."""
    subprocess.run(
        [str(ML_PYTHON), "-m", "tfpipe", "land-spans", "--source-uri", str(SAMPLE_CSV), "--landing-uri", str(landing)],
        check=True,
        capture_output=True,
        timeout=120,
    )


class PostgresDatabase:
    """A throwaway database on the machine's PostgreSQL, dropped afterwards."""

    def __init__(self) -> None:
        import psycopg2

        self._psycopg2 = psycopg2
        self.name = f"tfpipe_it_{uuid.uuid4().hex[:12]}"
        self._execute(f'CREATE DATABASE "{self.name}"')
        base = POSTGRES_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
        self.sqlalchemy_url = f"{base}/{self.name}"

    def _execute(self, statement: str) -> None:
        connection = self._psycopg2.connect(POSTGRES_DSN)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    def drop(self) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class AirflowStack:
    def __init__(
        self, root: Path, sql_alchemy_conn: str | None = None, extra_env: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.home = root / "airflow"
        self.artifacts = root / "artifacts"
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._token: str | None = None
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API_AUTH__JWT_SECRET": "integration-test-only-secret",  # pragma: allowlist secret
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "TFPIPE_LANDING_ROOT": str(root / "landing"),
            "TFPIPE_ARTIFACT_ROOT": str(self.artifacts),
            "TFPIPE_ML_PYTHON": str(ML_PYTHON),
            "TFPIPE_PROJECT_ROOT": str(PROJECT_ROOT),
            # The stack's own registry, and no model server unless a test starts one: nothing here may touch
            # the demo's registry or a server someone runs on the default port.
            "MLFLOW_TRACKING_URI": str(root / "mlflow" / "mlflow.db"),
            "TFPIPE_MLFLOW_ARTIFACT_ROOT": str(root / "mlflow" / "artifacts"),
            "AIRFLOW_CONN_TFPIPE_MODEL_SERVER": f"http://:unused@127.0.0.1:{free_port()}",
            "TFPIPE_QUOTA_LEDGER_SQLITE": str(root / "quota" / "ledger.db"),
            "TFPIPE_QUOTA_METRICS": str(root / "quota" / "metrics" / "tfpipe_quota.prom"),
            **({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn} if sql_alchemy_conn else {}),
            **(extra_env or {}),
        }

    # -- commands ---------------------------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([*AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    # -- REST API, as the UI uses it --------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None) -> Any:
        if self._token is None:
            # SimpleAuthManager in all-admins mode (test and demo only) hands out a token without credentials.
            with urllib.request.urlopen(f"{self.base_url}/auth/token", timeout=30) as response:
                self._token = json.loads(response.read())["access_token"]
        request = urllib.request.Request(
            f"{self.base_url}/api/v2{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        instances = self.api("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in instances["task_instances"]}

    # -- processes --------------------------------------------------------------------------------
    def start(self, *components: str) -> None:
        (self.home / "plugins").mkdir(parents=True, exist_ok=True)
        for component in components:
            log = open(self.root / f"{component}.log", "ab")  # noqa: SIM115 - closed in stop()
            self.processes[component] = subprocess.Popen(
                [*AIRFLOW, *component.split()],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if "api-server" in components:
            self.wait_for(self._api_is_up, timeout=120, what="api-server health")

    def stop(self, component: str | None = None) -> None:
        for name in [component] if component else list(self.processes):
            process = self.processes.pop(name)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def _api_is_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-6000:]}" for p in self.root.glob("*.log"))

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str, interval: float = 2.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"airflow {name} exited with {process.returncode}\n{self.logs()}")
            value = condition()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")
