"""scripts/topology.py's settings: what production insists on, and where its secrets come from.

The processes themselves are started for real by tests/integration/test_production_topology.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "topology.py"
REQUIRED = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow@db/airflow",
    "TFPIPE_MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://airflow@db/mlflow",
    "AIRFLOW_CONN_TFPIPE_QUOTA_LEDGER": "postgresql://airflow@db/quota",
    "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:6379/3",
}


@pytest.fixture
def topology(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("topology", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # A demo shell (or `make test`) exports its own Airflow settings; start from a clean slate.
    for name in list(os.environ):
        if name.startswith(("AIRFLOW", "TFPIPE_", "MLFLOW_")):
            monkeypatch.delenv(name)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    return module


def test_production_settings_come_from_the_env_file_with_the_environment_on_top(topology, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", "2")
    env = topology.Topology(tmp_path).env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "2", "the environment wins over deploy/production.env"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + REQUIRED["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    [bundle] = json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    assert bundle["classpath"] == "airflow.providers.git.bundles.git.GitDagBundle"
    connection = json.loads(env["AIRFLOW_CONN_TFPIPE_DAG_BUNDLE"])
    assert bundle["kwargs"]["git_conn_id"] == "tfpipe_dag_bundle" and connection["host"] == str(tmp_path / "dag-bundle")
    server = json.loads(env["AIRFLOW_CONN_TFPIPE_MODEL_SERVER"])
    assert server["password"] == env["TFPIPE_SERVING_ADMIN_TOKEN"], "the tasks' connection carries the server's token"


def test_missing_secrets_are_generated_once_into_a_private_file_and_reused(topology, tmp_path, monkeypatch):
    given = "from-the-environment"
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", given)
    first = topology.Topology(tmp_path).env
    kept = tmp_path / "secrets.env"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700, "the api-server logs the generated passwords"
    assert given not in kept.read_text(), "a secret the environment gives is not written down"
    assert first["AIRFLOW__API_AUTH__JWT_SECRET"] == given
    again = topology.Topology(tmp_path).env
    for name in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "TFPIPE_SERVING_ADMIN_TOKEN"):
        assert first[name] == again[name] and len(first[name]) >= 32, name
    masked = topology.Topology(tmp_path).masked_env()
    assert masked["TFPIPE_SERVING_ADMIN_TOKEN"] == "***" and masked["AIRFLOW__API_AUTH__JWT_SECRET"] == "***"
    assert masked["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True", "production keeps authentication"),
        ("AIRFLOW__CORE__EXECUTOR", "LocalExecutor", "'LocalExecutor'"),
        ("AIRFLOW__CELERY__BROKER_URL", "", "set AIRFLOW__CELERY__BROKER_URL"),
    ],
)
def test_a_demo_environment_cannot_weaken_production(topology, tmp_path, monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(topology.TopologyError, match=message):
        topology.Topology(tmp_path)


def test_publish_dags_commits_the_dags_folder_and_only_when_it_changed(topology, tmp_path):
    production = topology.Topology(tmp_path)
    first = production.publish_dags("first")
    repo = tmp_path / "dag-bundle"
    assert (repo / "dags" / "chicago_taxi_training.py").read_bytes() == (
        PROJECT_ROOT / "dags" / "chicago_taxi_training.py"
    ).read_bytes()
    assert not list(repo.rglob("__pycache__"))
    assert production.publish_dags("nothing new") == first
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], check=True, capture_output=True, text=True)
    assert log.stdout.split() == ["first"]


def test_the_cli_says_what_is_missing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--state", str(tmp_path), "status"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 1
    assert "set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in done.stderr and "deploy/production.env" in done.stderr
    assert not Path(tmp_path / "secrets.env").exists(), "nothing is generated before the settings are complete"
