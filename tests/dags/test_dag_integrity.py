"""Every DAG file imports cleanly, fast, without the ML runtime, and wires what the config says."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from airflow.dag_processing.dagbag import DagBag

from tests.conftest import PROJECT_ROOT

DAGS_FOLDER = PROJECT_ROOT / "dags"
HEAVY_MODULES = (
    "tensorflow",
    "tensorflow_data_validation",
    "tensorflow_model_analysis",
    "apache_beam",
    "great_expectations",
)


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "chicago_taxi_training" in dagbag.dag_ids


def test_importing_all_dag_files_loads_no_ml_library():
    code = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(DAGS_FOLDER)!r})
heavy = {HEAVY_MODULES!r}
print(json.dumps({{"dags": sorted(bag.dag_ids), "errors": list(bag.import_errors),
                   "loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == [] and "chicago_taxi_training" in report["dags"]
    assert report["loaded"] == []


def test_training_dag_is_monthly_backfillable_and_takes_a_data_uri(dagbag):
    dag = dagbag.dags["chicago_taxi_training"]
    # A monthly timetable (backfills), or an asset event: a span landed, or monitoring asked for retraining.
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert type(dag.timetable.timetable).__name__ == "CronDataIntervalTimetable"
    assert {asset.uri for asset in dag.timetable.asset_condition.objects} == {
        "tfpipe://chicago_taxi/spans",
        "tfpipe://chicago_taxi/retraining",
    }
    assert dag.start_date == dt.datetime(2013, 1, 1, tzinfo=dt.UTC)
    assert dag.catchup is False
    assert "data_uri" in dag.params and dag.params["data_uri"] is None
    assert {task.task_id for task in dag.tasks} >= {"wait_for_span", "ingest_examples", "validate_examples"}
    for task in dag.tasks:
        assert task.retries == 1 and task.owner == "ml-platform"
    assert dag.get_task("wait_for_span").mode == "reschedule", "waiting for data holds no worker slot"


def _render(task, **context):
    dag = task.dag
    base = {
        "params": {"data_uri": None},
        "triggering_asset_events": {},
        "run_id": "scheduled__2013-02-01T00:00:00+00:00",
        "ti": SimpleNamespace(task_id=task.task_id, map_index=-1),
        **dag.user_defined_macros,
    }
    base.update(context)
    task.render_template_fields(base, jinja_env=dag.get_template_env())
    return task


def test_a_scheduled_run_ingests_its_own_span_into_its_own_folder(dagbag):
    dag = dagbag.dags["chicago_taxi_training"]
    task = _render(
        dag.get_task("ingest_examples").prepare_for_execution(),
        data_interval_start=dt.datetime(2013, 2, 1, tzinfo=dt.UTC),
    )
    args = task.arguments
    assert args["span"] == "2013-02" and args["data_uri"] == ""
    assert args["output_uri"].endswith("/chicago_taxi/span=2013-02/run=scheduled__2013-02-01T00_00_00_00_00/examples")
    assert task.result_uri.endswith("/run=scheduled__2013-02-01T00_00_00_00_00/_stage_results/ingest_examples.json")


def test_a_run_on_named_data_is_partitioned_by_that_data(dagbag):
    dag = dagbag.dags["chicago_taxi_training"]
    task = _render(
        dag.get_task("ingest_examples").prepare_for_execution(),
        params={"data_uri": "/data/new.csv"},
        data_interval_start=None,
        run_id="manual__x",
    )
    assert task.arguments["data_uri"] == "/data/new.csv" and task.arguments["span"] == ""
    assert "/span=adhoc-" in task.arguments["output_uri"]


def test_training_runs_after_the_gate_with_tuning_mapped_over_the_search_space(dagbag):
    from tfpipe.config import load_pipeline_config

    config = load_pipeline_config(DAGS_FOLDER / "configs" / "chicago_taxi.yaml").training
    dag = dagbag.dags["chicago_taxi_training"]
    chain = [
        "wait_for_span",
        "ingest_examples",
        "split_examples",
        "validate_examples",
        "enough_history",
        "learn_transform",
        "tune_model",
        "select_hyperparameters",
        "train_model",
    ]
    for upstream, downstream in itertools.pairwise(chain):
        assert upstream in dag.get_task(downstream).upstream_task_ids, f"{upstream} >> {downstream}"
    # Nothing trains unless validation passed: every training task is downstream of the gate.
    assert {"learn_transform", "tune_model", "select_hyperparameters", "train_model"} <= dag.get_task(
        "validate_examples"
    ).get_flat_relative_ids(upstream=False)

    tune = dag.get_task("tune_model")
    trials = tune.expand_input.value["extra_arguments"]
    assert len(trials) == len(config.tuning.trials(config.hyperparameters)) == 4
    assert {json.loads(t["hyperparameters"])["learning_rate"] for t in trials} == {0.001, 0.003}
    assert {tuple(json.loads(t["hyperparameters"])["hidden"]) for t in trials} == {(64, 32), (128, 64)}
    assert len({t["output_uri"] for t in trials}) == 4, "each trial writes its own folder"
    assert tune.partial_kwargs["pool"] == config.tuning.pool

    train = dag.get_task("train_model")
    assert train.workers == config.workers == 2
    assert train.pool == config.tuning.pool and train.pool_slots == config.workers
    assert train.arguments["mode"] == "final"
    assert {link.name for link in train.operator_extra_links} >= {"TensorBoard", "Report"}


def test_the_final_training_writes_checkpoints_and_logs_inside_its_run(dagbag):
    dag = dagbag.dags["chicago_taxi_training"]
    task = dag.get_task("train_model").prepare_for_execution()
    task.arguments = {k: v for k, v in task.arguments.items() if isinstance(v, str)}  # drop upstream XComArgs
    task = _render(task, data_interval_start=dt.datetime(2016, 12, 1, tzinfo=dt.UTC))
    run = "/chicago_taxi/span=2016-12/run=scheduled__2013-02-01T00_00_00_00_00/"
    assert task.arguments["checkpoint_uri"].endswith(run + "checkpoints")
    assert task.arguments["tensorboard_uri"].endswith(run + "tensorboard")
    assert task.arguments["output_uri"].endswith(run + "model")


def test_deployment_waits_for_the_blessing_and_lineage_is_recorded_either_way(dagbag):
    dag = dagbag.dags["chicago_taxi_training"]
    for upstream, downstream in itertools.pairwise(
        ["train_model", "evaluate_model", "register_model", "blessing_gate"]
    ):
        assert upstream in dag.get_task(downstream).upstream_task_ids, f"{upstream} >> {downstream}"
    register = dag.get_task("register_model")
    assert json.loads(register.arguments["approval"]) == {"mode": "auto"}
    assert "approve_deployment" not in dag.task_ids, "the shipped config approves automatically"


def test_a_required_approval_adds_a_human_step_whose_answer_is_recorded(monkeypatch):
    monkeypatch.setenv("TFPIPE_APPROVAL", "required")
    dag = DagBag(dag_folder=str(DAGS_FOLDER)).dags["chicago_taxi_training"]
    approve = dag.get_task("approve_deployment")
    assert type(approve).__name__ == "ApprovalOperator" and approve.upstream_task_ids == {"blessing_gate"}
    record = dag.get_task("record_approval")
    assert record.stage == "register" and "tfpipe_approval(ti.xcom_pull" in record.arguments["approval"]
    assert record.arguments["run_key"] == dag.get_task("register_model").arguments["run_key"], "same MLflow run"


# Deployment: canary rollout after the gate, the champion after the rollout, and the rollback DAG.


def test_the_blessed_candidate_rolls_out_as_a_canary_then_becomes_champion(dagbag):
    from tfpipe.config import load_pipeline_config

    config = load_pipeline_config(DAGS_FOLDER / "configs" / "chicago_taxi.yaml")
    dag = dagbag.dags["chicago_taxi_training"]
    canary = dag.get_task("canary_rollout")
    assert type(canary).__name__ == "CanaryRolloutOperator"
    # Upstream: the gate, register_model whose result it reads, and its quota check (serving capacity).
    # Nothing moves traffic unless blessed.
    assert canary.upstream_task_ids == {"blessing_gate", "register_model", "check_quota_canary_rollout"}
    # A run gives back one stage's quota before it asks for the next stage's.
    assert dag.get_task("check_quota_canary_rollout").upstream_task_ids == {
        "blessing_gate",
        "register_model",
        "release_quota_evaluate_model",
    }
    assert canary.steps == config.rollout.steps and canary.promote is True
    assert canary.serving == config.serving and canary.alerts == config.alerts
    # The version and files register_model registered, not the training folder.
    assert (canary.version.operator.task_id, canary.version.key) == ("register_model", "model_version")
    assert (canary.model_uri.operator.task_id, canary.model_uri.key) == ("register_model", "model_uri")
    assert {link.name for link in canary.operator_extra_links} == {"Deployment"}
    assert canary.max_active_tis_per_dag == 1, "one rollout at a time across runs"

    promote = dag.get_task("promote_champion")
    assert promote.stage == "promote" and promote.upstream_task_ids == {"canary_rollout", "register_model"}
    assert promote.arguments["model_name"] == config.evaluation.model_name
    assert promote.arguments["run_key"] == dag.get_task("register_model").arguments["run_key"]
    assert (promote.arguments["version"].operator.task_id, promote.arguments["version"].key) == (
        "register_model",
        "model_version",
    )


def test_with_a_required_approval_the_canary_waits_for_the_recorded_approval(monkeypatch):
    monkeypatch.setenv("TFPIPE_APPROVAL", "required")
    dag = DagBag(dag_folder=str(DAGS_FOLDER)).dags["chicago_taxi_training"]
    upstream = {"record_approval", "register_model", "check_quota_canary_rollout"}
    assert dag.get_task("canary_rollout").upstream_task_ids == upstream


@pytest.fixture
def widening_dagbag(monkeypatch):
    """The training DAG with `rollout.approval_above_percent: 25` (the shipped config has none)."""
    monkeypatch.setenv("TFPIPE_ROLLOUT_APPROVAL_ABOVE", "25")
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    return bag


def test_widening_past_the_approval_step_waits_for_a_person_and_a_rejection_rolls_back(widening_dagbag):
    dag = widening_dagbag.dags["chicago_taxi_training"]
    first, widen = dag.get_task("canary_rollout"), dag.get_task("canary_rollout_widen")
    assert (first.steps, first.promote) == ([10, 25], False)
    assert (widen.steps, widen.promote) == ([50, 100], True)

    approve = dag.get_task("approve_widening")
    assert type(approve).__name__ == "ApprovalOperator" and approve.upstream_task_ids == {"canary_rollout"}
    assert approve.defaults == ["Reject"], "no answer in time rolls the canary back"
    record = dag.get_task("record_widening_approval")
    assert record.stage == "register" and "approve_widening" in record.upstream_task_ids
    assert "tfpipe_widening_approval(ti.xcom_pull(task_ids='approve_widening'), 25)" in record.arguments["approval"]
    assert widen.upstream_task_ids == {"record_widening_approval", "register_model"}
    assert dag.get_task("promote_champion").upstream_task_ids == {"canary_rollout_widen", "register_model"}

    # Reject skips the task right after the approval; only then does the abort run.
    abort = dag.get_task("abort_canary")
    assert type(abort).__name__ == "RollbackDeploymentOperator" and abort.version is None
    assert abort.upstream_task_ids == {"record_widening_approval"} and abort.trigger_rule == "all_skipped"


def test_the_widening_approval_is_recorded_next_to_the_first_one():
    from tfpipe_airflow.operators.rollout import widening_approval_record

    response = {
        "chosen_options": ["Approve"],
        "responded_by_user": {"id": "3", "name": "alice"},
        "responded_at": dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC),
    }
    assert json.loads(widening_approval_record(response, 25)) == {
        "widen_above_25.approved_at": "2026-05-01 12:00:00+00:00",
        "widen_above_25.approver": "alice",
        "widen_above_25.approver_id": "3",
        "widen_above_25.decision": "Approve",
    }


def test_the_rollback_dag_is_a_form_of_target_and_reason(dagbag):
    dag = dagbag.dags["chicago_taxi_rollback"]
    assert type(dag.timetable).__name__ == "NullTimetable" and dag.max_active_runs == 1
    assert dag.params["target_version"] == "", "empty: the previous champion"
    reason = dag.params.get_param("reason")
    assert reason.schema["type"] == "string" and reason.schema["minLength"] >= 1
    assert not reason.has_value, "the form requires a reason"
    for upstream, downstream in itertools.pairwise(["resolve_target", "rollback_traffic", "record_rollback"]):
        assert upstream in dag.get_task(downstream).upstream_task_ids
    assert dag.get_task("resolve_target").stage == "rollback-target"
    assert type(dag.get_task("rollback_traffic")).__name__ == "RollbackDeploymentOperator"
    assert dag.get_task("record_rollback").stage == "record-rollback"


def test_the_rollback_records_who_triggered_it_and_why(dagbag):
    dag = dagbag.dags["chicago_taxi_rollback"]
    task = dag.get_task("record_rollback").prepare_for_execution()
    task.arguments = {k: v for k, v in task.arguments.items() if isinstance(v, str)}  # drop upstream XComArgs
    task = _render(
        task,
        params={"target_version": " 3 ", "reason": "tips are off for card payments"},
        dag_run=SimpleNamespace(triggering_user_name="alice", run_type="manual"),
        run_id="manual__2026-05-01T12:00:00+00:00",
    )
    assert task.arguments["actor"] == "alice"
    assert task.arguments["reason"] == "tips are off for card payments"
    assert task.arguments["run_key"] == "manual__2026-05-01T12_00_00_00_00"
    assert task.result_uri.endswith(
        "/chicago_taxi/rollbacks/run=manual__2026-05-01T12_00_00_00_00/_stage_results/record_rollback.json"
    )
    resolve = _render(
        dag.get_task("resolve_target").prepare_for_execution(),
        params={"target_version": " 3 ", "reason": "x"},
        dag_run=SimpleNamespace(triggering_user_name=None, run_type="manual"),
    )
    assert resolve.arguments["version"] == "3"
    move = dag.get_task("rollback_traffic").prepare_for_execution()
    move.version = move.model_uri = None  # upstream XComArgs
    move = _render(
        move,
        params={"target_version": "", "reason": "x"},
        dag_run=SimpleNamespace(triggering_user_name=None, run_type="manual"),
    )
    assert move.actor == "airflow manual", "a run without a user says how it was started"
