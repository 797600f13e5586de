"""chicago_taxi_training: continuous training of the Chicago taxi "big tipper" classifier.

One run per monthly span of new trips (backfillable with `airflow backfill create`), or on any file
or folder a person names in the trigger form's `data_uri`. Every task writes under the run's own
artifact folder, so clearing and rerunning a task overwrites its outputs and duplicates nothing.

wait for the span -> ingest it -> split the training window by time -> validate the span and every
split (the gate) -> skip training if the window has too little history -> learn the transform ->
one tuning trial per point of the search space (mapped, pooled) -> select the best -> train it on
several workers, resumable from checkpoints.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from tfpipe.artifacts import ArtifactLayout
from tfpipe.config import load_pipeline_config
from tfpipe_airflow.operators.gates import candidate_is_blessed, training_window_is_complete
from tfpipe_airflow.operators.ml_stage import RunMLStageOperator
from tfpipe_airflow.sensors.landing import SpanLandedSensor
from tfpipe_airflow.templates import (
    DATA_SPAN,
    DATA_URI,
    FILTERS,
    MACROS,
    previous_span_uri,
    run_output_uri,
    stage_result_uri,
)

config = load_pipeline_config(Path(__file__).parent / "configs" / "chicago_taxi.yaml")
layout = ArtifactLayout(config.artifacts.root, config.pipeline)
training = config.training


def _utc(day: dt.date | None) -> dt.datetime | None:
    return None if day is None else dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


with DAG(
    dag_id=f"{config.pipeline}_training",
    description=config.description,
    # One run per calendar month of data: the run's data interval is its span.
    schedule=CronDataIntervalTimetable("0 0 1 * *", timezone="UTC"),
    start_date=_utc(config.spans.first),
    end_date=_utc(config.spans.last),
    catchup=False,
    max_active_runs=config.airflow.max_active_runs,
    default_args={
        "owner": config.airflow.owner,
        "retries": config.airflow.retries,
        "retry_delay": dt.timedelta(seconds=config.airflow.retry_delay_seconds),
    },
    params={
        "data_uri": Param(
            None,
            type=["null", "string"],
            title="Data to train on",
            description="A CSV file or folder of CSV files. Leave empty to use the span of the run's data interval.",
        ),
    },
    user_defined_macros=MACROS,
    user_defined_filters=FILTERS,
    tags=config.airflow.tags,
    doc_md=__doc__,
) as dag:
    wait_for_span = SpanLandedSensor(
        task_id="wait_for_span",
        landing_uri=config.data.landing_uri,
        span=DATA_SPAN,
        data_uri=DATA_URI,
        poke_interval=dt.timedelta(minutes=config.spans.landing_poke_minutes),
        timeout=dt.timedelta(hours=config.spans.landing_timeout_hours),
    )
    ingest = RunMLStageOperator(
        task_id="ingest_examples",
        stage="ingest",
        execution=config.execution,
        arguments={
            "landing_uri": config.data.landing_uri,
            "span": DATA_SPAN,
            "data_uri": DATA_URI,
            "output_uri": run_output_uri(layout, "examples"),
        },
        result_uri=stage_result_uri(layout),
    )
    split = RunMLStageOperator(
        task_id="split_examples",
        stage="split",
        execution=config.execution,
        arguments={
            "examples_uri": ingest.output["examples_uri"],
            "landing_uri": config.data.landing_uri,
            "span": DATA_SPAN,
            "first_span": config.spans.first.strftime("%Y-%m"),
            "config": training.split.model_dump_json(),
            "label": config.data.label,
            "timestamp_column": config.data.timestamp_column,
            "output_uri": run_output_uri(layout, "splits"),
        },
        result_uri=stage_result_uri(layout),
    )
    # The first gate: nothing downstream runs unless the new span and every split pass.
    validate = RunMLStageOperator(
        task_id="validate_examples",
        stage="validate",
        execution=config.execution,
        arguments={
            "examples_uri": ingest.output["examples_uri"],
            "output_uri": run_output_uri(layout, "validation"),
            "config": config.validation.model_dump_json(),
            "span": DATA_SPAN,
            "previous_uri": previous_span_uri(config.data.landing_uri),
            "serving_uri": config.validation.serving_data_uri or "",
            "splits_uri": split.output["splits_uri"],
        },
        result_uri=stage_result_uri(layout),
    )
    # The first spans of a backfill have too little history to train on: they stop here, validated.
    enough_history = ShortCircuitOperator(
        task_id="enough_history",
        python_callable=training_window_is_complete,
        op_kwargs={"trainable": split.output["trainable"], "reason": split.output["reason"]},
    )
    learn_transform = RunMLStageOperator(
        task_id="learn_transform",
        stage="transform",
        execution=config.execution,
        arguments={"splits_uri": split.output["splits_uri"], "output_uri": run_output_uri(layout, "transform")},
        result_uri=stage_result_uri(layout),
    )
    training_arguments = {
        "splits_uri": split.output["splits_uri"],
        "transform_uri": learn_transform.output["transform_uri"],
        "config": training.model_dump_json(),
    }
    trials = training.tuning.trials(training.hyperparameters) if training.tuning.enabled else []
    if len(trials) > 1:
        # One mapped task instance per trial; the pool bounds how many train at once.
        tune = RunMLStageOperator.partial(
            task_id="tune_model",
            stage="train",
            execution=config.execution,
            arguments={**training_arguments, "mode": "trial"},
            result_uri=stage_result_uri(layout),
            pool=training.tuning.pool,
            map_index_template="{{ task.extra_arguments['hyperparameters'] }}",
        ).expand(
            extra_arguments=[
                {
                    "hyperparameters": trial.model_dump_json(),
                    "output_uri": run_output_uri(layout, f"tuning/trial-{index}"),
                    "checkpoint_uri": run_output_uri(layout, f"tuning/trial-{index}-checkpoints"),
                }
                for index, trial in enumerate(trials)
            ]
        )
        select = RunMLStageOperator(
            task_id="select_hyperparameters",
            stage="select-trial",
            execution=config.execution,
            arguments={
                "trial_uris": [run_output_uri(layout, f"tuning/trial-{index}") for index in range(len(trials))],
                "metric": training.tuning.metric,
                "output_uri": run_output_uri(layout, "tuning/selection"),
            },
            result_uri=stage_result_uri(layout),
        )
        learn_transform >> tune >> select
        hyperparameters = select.output["hyperparameters"]
    else:
        hyperparameters = (trials[0] if trials else training.hyperparameters).model_dump_json()
    train = RunMLStageOperator(
        task_id="train_model",
        stage="train",
        execution=config.execution,
        arguments={
            **training_arguments,
            "mode": "final",
            "hyperparameters": hyperparameters,
            "output_uri": run_output_uri(layout, "model"),
            "checkpoint_uri": run_output_uri(layout, "checkpoints"),
            "tensorboard_uri": run_output_uri(layout, "tensorboard"),
        },
        result_uri=stage_result_uri(layout),
        workers=training.workers,
        tensorboard_url=training.tensorboard_url,
        # Each worker is a process on its own core: it holds as many pool slots.
        pool=training.tuning.pool,
        pool_slots=training.workers,
    )
    wait_for_span >> ingest >> split >> validate >> enough_history >> learn_transform >> train

    if config.evaluation is not None and config.registry is not None:
        evaluation, registry = config.evaluation, config.registry
        # The second gate: sliced metrics against thresholds and the champion.
        evaluate = RunMLStageOperator(
            task_id="evaluate_model",
            stage="evaluate",
            execution=config.execution,
            arguments={
                "eval_uri": split.output["eval_uri"],
                "candidate_uri": train.output["model_uri"],
                "output_uri": run_output_uri(layout, "evaluation"),
                "config": evaluation.model_dump_json(),
                "tracking_uri": registry.tracking_uri,
            },
            result_uri=stage_result_uri(layout),
        )
        # Every candidate's lineage is recorded; only a blessed one becomes a model version ("challenger").
        registration = {
            "tracking_uri": registry.tracking_uri,
            "artifact_root": registry.artifact_root or "",
            "experiment": registry.experiment,
            "model_name": evaluation.model_name,
            "run_key": "{{ run_id | tfpipe_run_key }}",
            "model_uri": train.output["model_uri"],
            "training_metrics_uri": run_output_uri(layout, "model/metrics.json"),
            "evaluation_uri": evaluate.output["evaluation_uri"],
            "splits_uri": split.output["splits_uri"],
            "transform_uri": learn_transform.output["transform_uri"],
            "schema_path": config.validation.schema_path,
            "config_path": config.source_path or "",
        }
        register = RunMLStageOperator(
            task_id="register_model",
            stage="register",
            execution=config.execution,
            arguments={**registration, "approval": json.dumps({"mode": evaluation.approval})},
            result_uri=stage_result_uri(layout),
        )
        blessing_gate = ShortCircuitOperator(
            task_id="blessing_gate",
            python_callable=candidate_is_blessed,
            op_kwargs={
                "blessed": evaluate.output["blessed"],
                "reasons": evaluate.output["reasons"],
                "report_uri": evaluate.output["report_uri"],
                "alert_email": config.alerts.email,
                "smtp_conn_id": config.alerts.smtp_conn_id,
                "from_email": config.alerts.from_email,
            },
        )
        train >> evaluate >> register >> blessing_gate
        if evaluation.approval == "required":
            # A person approves in the UI (Required actions) before any traffic moves; who and when
            # is recorded in the run's lineage. Rejecting skips everything after.
            approve_deployment = ApprovalOperator(
                task_id="approve_deployment",
                subject="Deploy the {{ dag.dag_id }} candidate of {{ tfpipe_data_span(data_interval_start) }}?",
                body=(
                    "The candidate was **BLESSED**: overall AUC {{ ti.xcom_pull(task_ids='evaluate_model', "
                    "key='auc') }}.\n\nEvaluation report: {{ ti.xcom_pull(task_ids='evaluate_model', "
                    "key='report_uri') }}"
                ),
                response_timeout=dt.timedelta(days=3),
                ignore_downstream_trigger_rules=True,
            )
            record_approval = RunMLStageOperator(
                task_id="record_approval",
                stage="register",
                execution=config.execution,
                arguments={
                    **registration,
                    "approval": "{{ tfpipe_approval(ti.xcom_pull(task_ids='approve_deployment')) }}",
                },
                result_uri=stage_result_uri(layout),
            )
            blessing_gate >> approve_deployment >> record_approval
