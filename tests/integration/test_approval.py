"""Human approval before traffic moves, under a real scheduler and triggerer.

With `evaluation.approval: required`, a blessed candidate waits in `approve_deployment` (Airflow's
ApprovalOperator, awaiting input: it holds no worker slot) until a person answers in the UI. The test answers
through the same REST endpoint the UI calls: one run is approved, and the approver and time land in
the registry's lineage; the other is rejected, and nothing after the approval runs.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import urllib.parse

import pytest

from tests.conftest import ML_PYTHON
from tests.integration.airflow_stack import AirflowStack, PostgresDatabase

pytestmark = pytest.mark.integration
DAG_ID = "chicago_taxi_training"
MODEL_NAME = "chicago_taxi_big_tipper"
# Two manual runs: span 2016-12 (approved) and span 2016-11 (rejected).
APPROVED, REJECTED = "2017-01-01T00:00:00Z", "2016-12-01T00:00:00Z"
DONE = ("success", "failed", "skipped", "upstream_failed", "removed")
WAITING_OR_DONE = ("awaiting_input", "deferred", *DONE)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("approval-stack")
    database = PostgresDatabase()
    stack = AirflowStack(
        root,
        sql_alchemy_conn=database.sqlalchemy_url,
        extra_env={
            "TFPIPE_APPROVAL": "required",
        },
    )
    try:
        stack.land_sample()
        stack.airflow("db", "migrate")
        stack.import_pools()
        stack.start("api-server", "dag-processor", "scheduler", "triggerer")
        stack.wait_for(lambda: DAG_ID in stack.airflow("dags", "list", "-o", "plain"), timeout=180, what="DAG parsed")
        stack.airflow("dags", "unpause", DAG_ID)
        yield stack
    finally:
        stack.stop()
        database.drop()


def _trigger(stack: AirflowStack, logical_date: str) -> str:
    run = stack.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": logical_date, "conf": {}})
    return run["dag_run_id"]


def _task(stack: AirflowStack, run_id: str, task_id: str) -> dict:
    return stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{task_id}")


def _hitl_path(run_id: str) -> str:
    return f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/approve_deployment/-1/hitlDetails"


def _lineage(stack: AirflowStack, version: str) -> dict:
    # The registry lives in the ML runtime (MLflow is not installed next to Airflow).
    script = (
        "import json, sys; from tfpipe.registry.mlflow_registry import ModelRegistry; "
        "print(json.dumps(ModelRegistry(sys.argv[1]).lineage(sys.argv[2], sys.argv[3])))"
    )
    done = subprocess.run(
        [str(ML_PYTHON), "-c", script, stack.env["MLFLOW_TRACKING_URI"], MODEL_NAME, version],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_approved_candidate_records_who_approved_and_a_rejected_one_stops(stack):
    approved, rejected = _trigger(stack, APPROVED), _trigger(stack, REJECTED)

    for run_id in (approved, rejected):
        # Training, evaluation and registration run first; then the run waits for a person.
        state = stack.wait_for(
            lambda run_id=run_id: (s := _task(stack, run_id, "approve_deployment")["state"]) in WAITING_OR_DONE and s,
            timeout=900,
            what=f"approve_deployment of {run_id} to wait for a person",
            interval=5,
        )
        assert state == "awaiting_input", f"{run_id}: approve_deployment is {state}, not waiting\n{stack.logs()}"
        assert _task(stack, run_id, "register_model")["state"] == "success"
        assert _task(stack, run_id, "record_approval")["state"] in (None, "scheduled", "queued", "none")

    detail = stack.api("GET", _hitl_path(approved))
    assert detail["options"] == ["Approve", "Reject"] and not detail["response_received"]
    assert "BLESSED" in detail["body"]

    answered_at = dt.datetime.now(dt.UTC)
    stack.api("PATCH", _hitl_path(approved), {"chosen_options": ["Approve"], "params_input": {}})
    stack.api("PATCH", _hitl_path(rejected), {"chosen_options": ["Reject"], "params_input": {}})

    state = stack.wait_for(
        lambda: (s := _task(stack, approved, "record_approval")["state"]) in DONE and s,
        timeout=300,
        what="record_approval",
        interval=3,
    )
    assert state == "success", stack.logs()
    rejected_state = stack.wait_for(
        lambda: (s := _task(stack, rejected, "record_approval")["state"]) in DONE and s,
        timeout=300,
        what="the rejected run's record_approval to be decided",
        interval=3,
    )
    assert rejected_state == "skipped"
    assert _task(stack, rejected, "approve_deployment")["state"] == "success"

    result = stack.api(
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(approved)}/taskInstances/register_model/xcomEntries/return_value",
    )
    registered = json.loads(result["value"]) if isinstance(result["value"], str) else result["value"]
    lineage = _lineage(stack, str(registered["model_version"]))
    approval = lineage["approval"]
    assert approval["decision"] == "Approve" and approval["mode"] == "required"
    assert approval["approver"] and approval["approver"] != "unknown"
    recorded = dt.datetime.fromisoformat(approval["approved_at"])
    assert abs((recorded - answered_at).total_seconds()) < 120
