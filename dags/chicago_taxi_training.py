"""chicago_taxi_training: continuous training of the Chicago taxi "big tipper" classifier.

One run per monthly span of new trips (backfillable with `airflow backfill create`), or on any file
or folder a person names in the trigger form's `data_uri`. Every task writes under the run's own
artifact folder, so clearing and rerunning a task overwrites its outputs and duplicates nothing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from tfpipe.artifacts import ArtifactLayout
from tfpipe.config import load_pipeline_config
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
    # The first gate: nothing downstream runs unless the data passes.
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
        },
        result_uri=stage_result_uri(layout),
    )
    wait_for_span >> ingest >> validate
