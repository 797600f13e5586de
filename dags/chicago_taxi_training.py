"""chicago_taxi_training: continuous training of the Chicago taxi "big tipper" classifier.

One run per monthly span of new trips (backfillable with `airflow backfill create`), or on any file
or folder a person names in the trigger form's `data_uri`. Every task writes under the run's own
artifact folder, so clearing and rerunning a task overwrites its outputs and duplicates nothing.

wait for the span -> ingest it -> split the training window by time -> validate the span and every
split (the gate) -> skip training if the window has too little history -> learn the transform ->
one tuning trial per point of the search space (mapped, pooled) -> select the best -> train it on
several workers, resumable from checkpoints -> evaluate by slice against the champion -> register (the
blessing gate; a person's approval when the config requires it) -> canary rollout with automatic
analysis at each traffic step (aborts roll back at once) -> the promoted version becomes `champion`.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
from pathlib import Path

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG, AssetOrTimeSchedule, CronDataIntervalTimetable, Param

from tfpipe.artifacts import ArtifactLayout
from tfpipe.config import load_pipeline_config
from tfpipe_airflow.assets import retraining_asset, span_landed_asset
from tfpipe_airflow.operators.gates import candidate_is_blessed, training_window_is_complete
from tfpipe_airflow.operators.ml_stage import RunMLStageOperator
from tfpipe_airflow.operators.quota import guard
from tfpipe_airflow.operators.rollout import ROLLOUT_MACROS, CanaryRolloutOperator, RollbackDeploymentOperator
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
    # One run per calendar month of data (the run's data interval is its span, so months backfill), and a
    # run whenever a span lands or monitoring asks for retraining (the events name the span to train on).
    schedule=AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable("0 0 1 * *", timezone="UTC"),
        assets=span_landed_asset(config.pipeline) | retraining_asset(config.pipeline),
    ),
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
    user_defined_macros={**MACROS, **ROLLOUT_MACROS},
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
                subject=f"Deploy the {{{{ dag.dag_id }}}} candidate of {DATA_SPAN}?",
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
        deploy_after = record_approval if evaluation.approval == "required" else blessing_gate

        if config.serving is not None:
            # Deployment: the registered version rolls out as a canary, analysed at each traffic step.
            rollout = config.rollout
            canary = {
                "version": register.output["model_version"],
                "model_uri": register.output["model_uri"],
                "serving": config.serving,
                "rollout": rollout,
                "alerts": config.alerts,
            }
            above = rollout.approval_above_percent
            narrow = [step for step in rollout.steps if above is None or step <= above]
            wide = [step for step in rollout.steps if step not in narrow]
            if wide:
                # Widening past `approval_above_percent` waits for a person, recorded in the run's lineage like
                # the approval before the first step. Rejecting (or no answer in time) rolls the canary back.
                approve_widening = ApprovalOperator(
                    task_id="approve_widening",
                    subject=f"Widen the {config.serving.model_name} canary past {above}%?",
                    body=(
                        "Canary analyses passed at "
                        + (", ".join(f"{step}%" for step in narrow) or "no step yet")
                        + f"; the next steps are {', '.join(f'{step}%' for step in wide)}. Approve to widen; "
                        "reject to send all traffic back to the stable version."
                    ),
                    defaults=ApprovalOperator.REJECT,
                    response_timeout=dt.timedelta(minutes=rollout.timeout_minutes),
                )
                record_widening = RunMLStageOperator(
                    task_id="record_widening_approval",
                    stage="register",
                    execution=config.execution,
                    arguments={
                        **registration,
                        "approval": "{{ tfpipe_widening_approval(ti.xcom_pull(task_ids='approve_widening'), "
                        f"{above}) }}}}",
                    },
                    result_uri=stage_result_uri(layout),
                )
                widen = CanaryRolloutOperator(task_id="canary_rollout_widen", steps=wide, **canary)
                if narrow:
                    canary_rollout = CanaryRolloutOperator(
                        task_id="canary_rollout", steps=narrow, promote=False, **canary
                    )
                    deploy_after >> canary_rollout >> approve_widening
                    # Runs only when the widening was rejected (the approval skips the task before it).
                    abort_canary = RollbackDeploymentOperator(
                        task_id="abort_canary",
                        serving=config.serving,
                        reason=f"widening the canary past {above}% was not approved",
                        actor="{{ ((ti.xcom_pull(task_ids='approve_widening') or {}).get('responded_by_user') "
                        "or {}).get('name', 'the approval timeout') }}",
                        trigger_rule="all_skipped",
                    )
                    record_widening >> abort_canary
                else:
                    deploy_after >> approve_widening
                approve_widening >> record_widening >> widen
                last_rollout = widen
            else:
                last_rollout = CanaryRolloutOperator(task_id="canary_rollout", **canary)
                deploy_after >> last_rollout
            promote_champion = RunMLStageOperator(
                task_id="promote_champion",
                stage="promote",
                execution=config.execution,
                arguments={
                    "tracking_uri": registry.tracking_uri,
                    "model_name": evaluation.model_name,
                    "version": register.output["model_version"],
                    "run_key": "{{ run_id | tfpipe_run_key }}",
                    "actor": "{{ dag.dag_id }} run {{ run_id }}",
                },
                result_uri=stage_result_uri(layout),
            )
            last_rollout >> promote_champion

    # Compute quota: a check (a setup task) before each heavy stage reserves what it asks from the shared
    # ledger, and a release (a teardown) gives it back whatever happens. Wired last: a check takes over
    # its stage's upstream dependencies. A run asks for its next stage's share only once it has given back
    # the last one, or it would wait on itself (with 2 cores, training holds them all).
    guard_quota = functools.partial(guard, pipeline=config.pipeline, quota=config.quota, alerts=config.alerts)
    guards = [guard_quota(validate, "validate")]
    if len(trials) > 1:
        guards.append(guard_quota(tune, "tune_trial", parallel=min(len(trials), training.tuning.pool_slots)))
    guards.append(guard_quota(train, "train"))
    if config.evaluation is not None and config.registry is not None:
        guards.append(guard_quota(evaluate, "evaluate"))
        if config.serving is not None and not wide:
            # The canary's model is loaded next to stable's. The rollout defers between steps, when no
            # heartbeat renews a lease: it holds one as long as its timeout.
            lease = dt.timedelta(minutes=config.rollout.timeout_minutes)
            guards.append(guard_quota(last_rollout, "serve", lease=lease))
    guarded = [pair for pair in guards if pair is not None]
    for (_, release), (next_check, _) in itertools.pairwise(guarded):
        release >> next_check
