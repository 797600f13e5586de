"""chicago_taxi_rollback: send all traffic back to an earlier model version, at once, from the UI.

Trigger it with the form: the version to go back to (empty: the champion before the current one) and
why. resolve the target in the registry -> move all traffic to it in one call (the seconds it took are
in the log) -> make it the registry's `champion` again, recording who (the user who triggered the run),
when and why.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import DAG, Param

from tfpipe.artifacts import ArtifactLayout, join
from tfpipe.config import load_pipeline_config
from tfpipe_airflow.operators.ml_stage import RunMLStageOperator
from tfpipe_airflow.operators.rollout import RollbackDeploymentOperator
from tfpipe_airflow.templates import FILTERS, MACROS

config = load_pipeline_config(Path(__file__).parent / "configs" / "chicago_taxi.yaml")
layout = ArtifactLayout(config.artifacts.root, config.pipeline)
# Who asked: the user who triggered the run in the UI (or the CLI/API user); the run type otherwise.
TRIGGERED_BY = "{{ dag_run.triggering_user_name or ('airflow ' ~ dag_run.run_type) }}"
RUN_KEY = "{{ run_id | tfpipe_run_key }}"
# A rollback run has no data span: its stage results live under the pipeline's rollbacks folder.
RESULT_URI = join(layout.root, layout.pipeline, "rollbacks", f"run={RUN_KEY}", "_stage_results/{{ ti.task_id }}.json")

if config.serving is not None and config.registry is not None and config.evaluation is not None:
    registry, model_name = config.registry, config.evaluation.model_name
    with DAG(
        dag_id=f"{config.pipeline}_rollback",
        description=f"Roll {config.serving.model_name} back to an earlier version: all traffic at once, recorded.",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        default_args={"owner": config.airflow.owner, "retries": 0},
        params={
            "target_version": Param(
                "",
                type="string",
                title="Version to roll back to",
                description="A registered version of the model. Leave empty for the previous champion.",
            ),
            "reason": Param(
                type="string",
                minLength=3,
                title="Reason",
                description="Why: recorded in the registry with your name and the time.",
            ),
        },
        user_defined_macros=MACROS,
        user_defined_filters=FILTERS,
        tags=[*config.airflow.tags, "rollback"],
        doc_md=__doc__,
    ) as dag:
        resolve = RunMLStageOperator(
            task_id="resolve_target",
            stage="rollback-target",
            execution=config.execution,
            arguments={
                "tracking_uri": registry.tracking_uri,
                "model_name": model_name,
                "version": "{{ params.target_version | trim }}",
            },
            result_uri=RESULT_URI,
        )
        move_traffic = RollbackDeploymentOperator(
            task_id="rollback_traffic",
            serving=config.serving,
            version=resolve.output["version"],
            model_uri=resolve.output["model_uri"],
            reason="{{ params.reason }}",
            actor=TRIGGERED_BY,
            alerts=config.alerts,
        )
        record = RunMLStageOperator(
            task_id="record_rollback",
            stage="record-rollback",
            execution=config.execution,
            arguments={
                "tracking_uri": registry.tracking_uri,
                "model_name": model_name,
                "version": resolve.output["version"],
                "actor": TRIGGERED_BY,
                "reason": "{{ params.reason }}",
                "run_key": RUN_KEY,
            },
            result_uri=RESULT_URI,
        )
        resolve >> move_traffic >> record
