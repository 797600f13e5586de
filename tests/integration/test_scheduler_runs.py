"""The training DAG under a real scheduler: a backfill over three spans, then a cleared task rerun.

Airflow 3 runs backfills in the scheduler, so this starts the api-server, scheduler, triggerer and
dag-processor on a fresh metadata database, as `airflow standalone` would.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from tests.integration.airflow_stack import AirflowStack, PostgresDatabase

pytestmark = pytest.mark.integration
DAG_ID = "chicago_taxi_training"
SPANS = ["2013-01", "2013-02", "2013-03"]
# Spans of early 2013 have no history to train on: their runs validate the span, then skip training.
AFTER_INGEST = {
    "split_examples",
    "validate_examples",
    "enough_history",
    "learn_transform",
    "tune_model",
    "select_hyperparameters",
    "train_model",
    "evaluate_model",
    "register_model",
    "blessing_gate",
    "canary_rollout",
    "promote_champion",
}
# Each heavy stage's quota check (a setup task) and release (its teardown).
QUOTA = {
    f"{kind}_quota_{stage}"
    for kind in ("check", "release")
    for stage in ("validate_examples", "tune_model", "train_model", "evaluate_model", "canary_rollout")
}
TRAINING = AFTER_INGEST - {"split_examples", "validate_examples", "enough_history"}
FINISHED = ("success", "failed", "skipped", "upstream_failed")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    database = PostgresDatabase()
    stack = AirflowStack(tmp_path_factory.mktemp("airflow-stack"), sql_alchemy_conn=database.sqlalchemy_url)
    try:
        stack.land_sample()
        stack.airflow("db", "migrate")
        stack.import_pools()
        # The triggerer resumes deferred tasks: a quota check waits deferred while other runs hold the cores.
        stack.start("api-server", "dag-processor", "scheduler", "triggerer")
        stack.wait_for(lambda: DAG_ID in stack.airflow("dags", "list", "-o", "plain"), timeout=180, what="DAG parsed")
        stack.airflow("dags", "unpause", DAG_ID)
        yield stack
    finally:
        stack.stop()
        database.drop()


def _runs(stack: AirflowStack) -> list[dict]:
    return [run for run in stack.dag_runs(DAG_ID) if run["run_type"] == "backfill"]


def _tree(root: Path) -> dict[str, str]:
    """Every file under root with its checksum; stage result files hold timings, so only their presence counts."""
    return {
        str(path.relative_to(root)): ""
        if "_stage_results" in path.parts
        else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_backfill_over_three_spans_gives_three_runs_each_on_its_own_span(stack):
    stack.airflow(
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        "2013-01-01",
        "--to-date",
        "2013-03-01",
        "--max-active-runs",
        "3",
    )

    def all_finished():
        runs = _runs(stack)
        return runs if len(runs) == 3 and all(run["state"] in ("success", "failed") for run in runs) else None

    runs = stack.wait_for(all_finished, timeout=600, what="three backfill runs to finish", interval=2)
    assert sorted(run["state"] for run in runs) == ["success"] * 3, stack.logs()
    assert sorted(run["logical_date"][:10] for run in runs) == ["2013-01-01", "2013-02-01", "2013-03-01"]

    for span in SPANS:
        [run_dir] = (stack.artifacts / "chicago_taxi" / f"span={span}").iterdir()
        assert run_dir.name.startswith("run=backfill__")
        manifest = json.loads((run_dir / "examples" / "manifest.json").read_text())
        assert manifest["span"] == span
        with open(stack.landing / f"span={span}" / "trips.csv", newline="") as handle:
            landed_rows = sum(1 for _ in csv.reader(handle)) - 1
        assert manifest["row_count"] == landed_rows
        assert (run_dir / "validation" / "statistics" / "examples" / "statistics.pb").stat().st_size > 0
        assert (run_dir / "validation" / "report.html").exists()
        splits = json.loads((run_dir / "splits" / "manifest.json").read_text())
        assert splits["trainable"] is False and "not enough history to train" in splits["reason"]
        states = stack.task_states(DAG_ID, next(r["dag_run_id"] for r in runs if r["logical_date"][:7] == span))
        assert all(states[task] == "skipped" for task in TRAINING), states


def test_clearing_a_finished_task_reruns_it_into_the_same_artifacts(stack):
    [run] = [run for run in _runs(stack) if run["logical_date"].startswith("2013-02-01")]
    run_root = stack.artifacts / "chicago_taxi" / "span=2013-02"
    before = _tree(run_root)
    ingest_result = next(run_root.glob("run=*/_stage_results/ingest_examples.json"))
    first_mtime = ingest_result.stat().st_mtime_ns

    # What the UI's "Clear" button sends: this task and everything downstream of it, in this run.
    cleared = stack.api(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        {
            "dag_run_id": run["dag_run_id"],
            "task_ids": ["ingest_examples"],
            "include_downstream": True,
            "only_failed": False,
            "dry_run": False,
        },
    )
    assert {ti["task_id"] for ti in cleared["task_instances"]} == {"ingest_examples", *AFTER_INGEST, *QUOTA}

    def rerun_finished():
        states = stack.task_states(DAG_ID, run["dag_run_id"])
        done = ingest_result.stat().st_mtime_ns != first_mtime and states["train_model"] in FINISHED
        return states if done else None

    states = stack.wait_for(rerun_finished, timeout=300, what="cleared tasks to run again", interval=2)
    assert states["ingest_examples"] == "success" and states["validate_examples"] == "success"
    assert states["enough_history"] == "success" and states["train_model"] == "skipped"
    assert _tree(run_root) == before, "the rerun rewrote the same files with the same content, and nothing else"
