"""Two DAG runs race for a quota that fits one, under a real scheduler, triggerer and LocalExecutor.

A tiny DAG (written here, not in dags/) guards one heavy task with `guard`: its check (setup), the task,
its release (teardown). The ledger is a throwaway Postgres database reached through an Airflow connection,
as in production. One run reserves and runs; the other's check defers (in the triggerer, no worker slot)
until the first run's release frees the room, then runs; the ledger's event log shows that nothing was
ever over-committed.
"""

from __future__ import annotations

import json
import time
import urllib.error

import pytest

from tests.integration.airflow_stack import AirflowStack, PostgresDatabase
from tfpipe.quota import QuotaLedger
from tfpipe.quota.ledger import concurrent_peak

pytestmark = pytest.mark.integration
DAG_ID = "quota_race"
RUNS = ("race_a", "race_b")

DAG_SOURCE = """
import datetime as dt
import time

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from tfpipe.config import QuotaConfig
from tfpipe_airflow.operators.quota import guard

QUOTA = QuotaConfig.model_validate(
    {
        "ledger": {"conn_id": "tfpipe_quota_ledger"},
        "budget": {"cpu": 2, "memory_gib": 4},
        "pipeline_cap": {"cpu": 2},
        "lease_seconds": 20,
        "poll_seconds": 1,
        "wait_timeout_minutes": 5,
        "metrics_path": METRICS_PATH,
        "stages": {"heavy": {"cpu": 2, "memory_gib": 1, "expected_minutes": 1}},
    }
)


def heavy():
    time.sleep(6)
    return {"usage": {"wall_seconds": 6.0, "cpu_seconds": 0.05, "peak_rss_mib": 60.0}}


with DAG(DAG_ID, schedule=None, start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), max_active_runs=2):
    stage = PythonOperator(task_id="heavy_stage", python_callable=heavy, multiple_outputs=True)
    guard(stage, "heavy", pipeline="race", quota=QUOTA, assign_pool=False)
"""


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    root = tmp_path_factory.mktemp("quota-race")
    dags = root / "dags"
    dags.mkdir()
    metrics = root / "metrics" / "tfpipe_quota.prom"
    source = DAG_SOURCE.replace("DAG_ID", repr(DAG_ID)).replace("METRICS_PATH", repr(str(metrics)))
    (dags / "quota_race.py").write_text(source)
    metadata, ledger = PostgresDatabase(), PostgresDatabase()
    ledger_uri = ledger.sqlalchemy_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    stack = AirflowStack(
        root,
        sql_alchemy_conn=metadata.sqlalchemy_url,
        extra_env={
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW_CONN_TFPIPE_QUOTA_LEDGER": ledger_uri,
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        },
    )
    try:
        stack.airflow("db", "migrate")
        stack.start("api-server", "dag-processor", "scheduler", "triggerer")
        stack.wait_for(lambda: _dag_exists(stack), timeout=180, what="the race DAG parsed")
        stack.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        yield stack, QuotaLedger.from_url(ledger.sqlalchemy_url), metrics
    finally:
        stack.stop()
        metadata.drop()
        ledger.drop()


def _dag_exists(stack: AirflowStack) -> bool:
    try:
        return stack.api("GET", f"/dags/{DAG_ID}")["dag_id"] == DAG_ID
    except urllib.error.HTTPError:
        return False


def test_one_run_proceeds_the_other_waits_deferred_and_nothing_is_over_committed(race):
    stack, ledger, metrics = race
    for run in RUNS:
        stack.api("POST", f"/dags/{DAG_ID}/dagRuns", {"dag_run_id": run, "logical_date": None})
    seen: dict[str, set[str]] = {run: set() for run in RUNS}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        states = {run: stack.task_states(DAG_ID, run) for run in RUNS}
        for run, tasks in states.items():
            seen[run].add(f"check:{tasks.get('check_quota_heavy_stage')}")
            if tasks.get("heavy_stage") == "running":
                seen[run].add("running")
        if all(all(state == "success" for state in tasks.values()) for tasks in states.values()):
            break
        assert not any(
            state in ("failed", "upstream_failed") for tasks in states.values() for state in tasks.values()
        ), f"{states}\n{stack.logs()}"
        time.sleep(0.5)
    else:
        raise AssertionError(f"the runs did not finish: {states}\n{stack.logs()}")

    waited = [run for run in RUNS if "check:deferred" in seen[run]]
    assert len(waited) == 1, f"exactly one run waited for the quota, deferred: {seen}"
    events = ledger.events()
    kinds = [(event["kind"], event["holder_key"].split("/")[1]) for event in events if event["kind"] != "reuse"]
    first = next(run for run in RUNS if run not in waited)
    assert kinds[:3] == [("reserve", first), ("refuse", waited[0]), ("release", first)], kinds
    assert kinds[3:] == [("reserve", waited[0]), ("release", waited[0])], kinds
    assert concurrent_peak(events, "cpu") == 2, "the budget fits one run: never two at once"
    history = ledger.usage_history("race", "heavy")
    assert sorted(row["run_id"] for row in history) == sorted(RUNS)
    assert all(row["wall_seconds"] == 6.0 for row in history)
    exported = metrics.read_text()
    assert 'tfpipe_quota_refusals_total{pipeline="race",resource="cpu"} 1.0' in exported
    assert json.loads(json.dumps(ledger.status()["active"])) == []
