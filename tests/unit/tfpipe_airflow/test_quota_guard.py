"""`guard` wires a quota check (setup) and a release (teardown) around a stage; pools come from the same config."""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
from functools import partial

import pytest
import yaml
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG
from airflow.task.trigger_rule import TriggerRule

from tests.conftest import CONFIG_PATH, PROJECT_ROOT
from tfpipe.config import ExecutionConfig, LocalExecution, QuotaConfig, load_pipeline_config
from tfpipe.errors import ConfigError
from tfpipe_airflow import pools
from tfpipe_airflow.operators.ml_stage import RunMLStageOperator
from tfpipe_airflow.operators.quota import CheckComputeQuotaOperator, ReleaseComputeQuotaOperator, guard

QUOTA = load_pipeline_config(CONFIG_PATH).quota


def _noop(*_: object) -> None:
    return None


def _dag(quota: QuotaConfig | None = QUOTA):
    with DAG("guarded", start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), schedule=None) as dag:
        prepare = PythonOperator(task_id="prepare", python_callable=_noop)
        train = RunMLStageOperator(
            task_id="train_model",
            stage="train",
            execution=ExecutionConfig(local=LocalExecution(python="python3")),
            workers=2,
        )
        tune = PythonOperator.partial(task_id="tune_model", python_callable=_noop, pool="tfpipe_training").expand(
            op_args=[[1], [2], [3]]
        )
        after = PythonOperator(task_id="after", python_callable=_noop)
        prepare >> tune >> train >> after
        guard_quota = partial(guard, pipeline="chicago_taxi", quota=quota)
        guarded = {"train": guard_quota(train, "train"), "tune": guard_quota(tune, "tune_trial", parallel=2)}
    return dag, guarded


def test_the_check_is_a_setup_before_the_stage_and_the_release_a_teardown_after_it():
    dag, guarded = _dag()
    check, release = guarded["train"]
    assert isinstance(check, CheckComputeQuotaOperator) and isinstance(release, ReleaseComputeQuotaOperator)
    assert check.is_setup and release.is_teardown
    assert release.trigger_rule == TriggerRule.ALL_DONE_SETUP_SUCCESS
    assert check.upstream_task_ids == {"tune_model"}, "it takes over the stage's upstream: reserves when it could run"
    assert dag.get_task("train_model").upstream_task_ids == {"tune_model", "check_quota_train_model"}
    assert release.upstream_task_ids == {"check_quota_train_model", "train_model"}
    assert dag.get_task("after").upstream_task_ids == {"train_model"}, "downstream does not wait for the release"
    assert (check.guarded.workers, check.guarded.request.cpu) == (2, 1)
    assert check.deferrable is True and check.wait_timeout == dt.timedelta(minutes=120)
    train = dag.get_task("train_model")
    assert (train.pool, train.pool_slots) == ("tfpipe_compute", 2), "default pool: one slot per core it holds"
    assert train._pre_execute_hook is not None
    assert len(train.on_retry_callback) == len(train.on_success_callback) == len(train.on_failure_callback) == 1


def test_a_mapped_stage_holds_one_reservation_for_its_parallel_instances():
    dag, guarded = _dag()
    check, _ = guarded["tune"]
    assert (check.guarded.instances, check.guarded.parallel, check.guarded.mapped) == (3, 2, True)
    assert check.upstream_task_ids == {"prepare"}
    tune = dag.get_task("tune_model")
    assert tune.pool == "tfpipe_training", "a stage with its own pool keeps it"
    assert len(tune.on_execute_callback) == 1


def test_the_guarded_dag_serializes_for_the_scheduler():
    from airflow.serialization.serialized_objects import DagSerialization

    dag, _ = _dag()
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert restored.get_task("release_quota_train_model").is_teardown
    assert restored.get_task("check_quota_tune_model").is_setup


def test_a_request_that_could_never_fit_fails_the_parse():
    too_small = QUOTA.model_copy(update={"pipeline_cap": QUOTA.pipeline_cap.model_copy(update={"cpu": 1.0})})
    with pytest.raises(ValueError, match=r"train_model would ask for cpu 2 cores.*could never run"):
        _dag(too_small)


def test_no_quota_section_wires_nothing():
    dag, guarded = _dag(None)
    assert guarded == {"train": None, "tune": None}
    assert not any(task.task_id.startswith(("check_quota", "release_quota")) for task in dag.tasks)


def test_the_wiring_of_the_training_dag():
    """Every heavy stage of the training DAG is guarded: a check (setup) before it, a release (teardown) after."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["chicago_taxi_training"]
    for stage in ("validate_examples", "tune_model", "train_model", "evaluate_model", "canary_rollout"):
        check, release = dag.get_task(f"check_quota_{stage}"), dag.get_task(f"release_quota_{stage}")
        assert check.is_setup and release.is_teardown
        assert check.task_id in dag.get_task(stage).upstream_task_ids
        assert stage in release.upstream_task_ids
    chain = ["validate_examples", "tune_model", "train_model", "evaluate_model", "canary_rollout"]
    for before, after in itertools.pairwise(chain):
        # Sequential stages of one run: the next check waits for the last release, or it waits on itself.
        assert f"release_quota_{before}" in dag.get_task(f"check_quota_{after}").upstream_task_ids
    assert dag.get_task("check_quota_tune_model").guarded.parallel == 2
    assert dag.get_task("check_quota_train_model").guarded.workers == 2
    assert dag.get_task("train_model").pool == "tfpipe_training", "training keeps its pool"
    assert dag.get_task("validate_examples").pool == "tfpipe_compute"


def test_pools_are_sized_from_the_same_config(tmp_path, capsys):
    assert pools.main([str(PROJECT_ROOT / "dags" / "configs")]) == 0
    imported = pools.pools_of(PROJECT_ROOT / "dags" / "configs")
    assert imported["tfpipe_compute"] == {
        "slots": 2,
        "description": "tfpipe compute: quota-guarded ML stages, one slot per core (quota.budget.cpu)",
        "include_deferred": False,
    }
    assert imported["tfpipe_training"]["slots"] == 2


def _config_copy(folder, name: str, **quota_overrides) -> None:
    document = yaml.safe_load(CONFIG_PATH.read_text())
    document["pipeline"] = name
    document["quota"].update(quota_overrides)
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(document))


def test_configs_that_disagree_on_the_shared_budget_are_refused(tmp_path, capsys):
    configs = tmp_path / "configs"
    shutil.copytree(PROJECT_ROOT / "dags" / "configs" / "chicago_taxi", configs / "chicago_taxi")
    _config_copy(configs, "a")
    _config_copy(configs, "b", budget={"cpu": 4, "memory_gib": 16, "gpu": 0, "cpu_hours": 24})
    with pytest.raises(ConfigError, match="the budget is shared by every pipeline"):
        pools.pools_of(configs)
    _config_copy(configs, "b", pool="tfpipe_training")
    with pytest.raises(ConfigError, match="name two pools"):
        pools.pools_of(configs)
