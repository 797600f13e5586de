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
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
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
