"""The custom job our Vertex AI mode submits, and how it waits for it and reads its result.

Only the API clients are fake: a JobServiceClient stand-in returned by the hook's client getter (so no
credentials are ever looked up) and GCSHook.download. Requests go through the real proto types.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from unittest import mock

import pytest
from airflow.providers.google.cloud.hooks.gcs import GCSHook
from airflow.providers.google.cloud.hooks.vertex_ai.custom_job import CustomJobHook
from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
from airflow.sdk.exceptions import AirflowException
from google.api_core.exceptions import NotFound
from google.cloud.aiplatform_v1.types import (
    CancelCustomJobRequest,
    CreateCustomJobRequest,
    CustomJob,
    GetCustomJobRequest,
    JobState,
)

from tfpipe.config import VertexAIExecution
from tfpipe_airflow.execution.vertex_ai import build_custom_job, cancel_custom_job, job_labels, run_custom_job
from tfpipe_airflow.hooks.ml_stage import STAGE_ENVIRONMENT

IMAGE = "europe-docker.pkg.dev/acme/ml/tfpipe-ml:1.4.2"
RESULT_URI = "gs://acme-ml/chicago_taxi/span=2016-03/run=r1/statistics/result.json"
JOB_NAME = "projects/acme-ml/locations/europe-west4/customJobs/1234567890"  # pragma: allowlist secret
ARGV = ["--input-uri", "gs://acme-ml/examples", "--output-uri", "gs://acme-ml/statistics"]


class FakeJobServiceClient:
    """Validates each call as the real request message, records it, and replays job states."""

    def __init__(self, states: list[JobState], error_message: str = "") -> None:
        self.states = list(states)
        self.error_message = error_message
        self.created: CreateCustomJobRequest | None = None
        self.polled: list[str] = []
        self.cancelled: list[str] = []

    def _job(self, state: JobState) -> CustomJob:
        error = {"code": 9, "message": self.error_message} if self.error_message else None
        return CustomJob(name=JOB_NAME, state=state, error=error)

    def create_custom_job(self, *, parent: str, custom_job: dict[str, Any]) -> CustomJob:
        self.created = CreateCustomJobRequest(parent=parent, custom_job=custom_job)
        return self._job(JobState.JOB_STATE_PENDING)

    def get_custom_job(self, *, name: str, **_: Any) -> CustomJob:
        self.polled.append(GetCustomJobRequest(name=name).name)
        return self._job(self.states.pop(0))

    def cancel_custom_job(self, *, name: str) -> None:
        self.cancelled.append(CancelCustomJobRequest(name=name).name)


@pytest.fixture(autouse=True)
def no_google_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: GoogleBaseHook) -> None:
        raise AssertionError("a test tried to fetch Google credentials")

    monkeypatch.setattr(GoogleBaseHook, "get_credentials_and_project_id", refuse)


@pytest.fixture
def config() -> VertexAIExecution:
    return VertexAIExecution(
        project_id="acme-ml",
        region="europe-west4",
        image_uri=IMAGE,
        machine_type="n1-highmem-8",
        gcp_conn_id="tfpipe_gcp",
        service_account="tfpipe-runner@acme-ml.iam.gserviceaccount.com",
        impersonation_chain=["deployer@acme-ml.iam.gserviceaccount.com"],
        poll_interval_seconds=45,
    )


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, config: VertexAIExecution) -> CustomJobHook:
    # A connection with no key: the hook reads it when built; credentials are only fetched by the
    # client getters, which the tests replace.
    monkeypatch.setenv("AIRFLOW_CONN_TFPIPE_GCP", json.dumps({"conn_type": "google_cloud_platform"}))
    return CustomJobHook(gcp_conn_id=config.gcp_conn_id, impersonation_chain=config.impersonation_chain)


def patch_client(client: FakeJobServiceClient) -> mock._patch:
    return mock.patch.object(CustomJobHook, "get_job_service_client", autospec=True, return_value=client)


def statistics_job(config: VertexAIExecution) -> dict[str, Any]:
    return build_custom_job(
        display_name="chicago_taxi_training.statistics.r1",
        stage="statistics",
        argv=ARGV,
        result_uri=RESULT_URI,
        config=config,
        labels={"pipeline": "chicago_taxi", "run_id": "scheduled__2016-03-01T00:00:00+00:00"},
    )


def test_job_request(config: VertexAIExecution) -> None:
    job = statistics_job(config)

    assert job == {
        "display_name": "chicago_taxi_training.statistics.r1",
        "job_spec": {
            "worker_pool_specs": [
                {
                    "replica_count": 1,
                    "machine_spec": {"machine_type": "n1-highmem-8"},
                    "container_spec": {
                        "image_uri": IMAGE,
                        "command": ["python", "-m", "tfpipe"],
                        "args": ["statistics", *ARGV, "--result-file", RESULT_URI],
                        "env": [{"name": name, "value": value} for name, value in STAGE_ENVIRONMENT.items()],
                    },
                }
            ],
            "service_account": "tfpipe-runner@acme-ml.iam.gserviceaccount.com",
        },
        "labels": {
            "pipeline": "chicago_taxi",
            "run_id": "scheduled__2016-03-01t00-00-00-00-00",
            "part-of": "tfpipe",
            "tfpipe-stage": "statistics",
        },
    }
    # Unknown or mistyped fields would raise here.
    proto = CustomJob(job)
    container = proto.job_spec.worker_pool_specs[0].container_spec
    assert list(container.args)[-2:] == ["--result-file", RESULT_URI]
    env = {item.name: item.value for item in container.env}
    assert env.items() >= {"TF_USE_LEGACY_KERAS": "1", "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "1"}.items()


def test_job_without_service_account_uses_the_default(config: VertexAIExecution) -> None:
    job = statistics_job(config.model_copy(update={"service_account": None}))
    assert "service_account" not in job["job_spec"]
    CustomJob(job)


def test_result_uri_must_be_gcs(config: VertexAIExecution) -> None:
    with pytest.raises(ValueError, match="gs://"):
        build_custom_job(display_name="x", stage="statistics", argv=[], result_uri="/tmp/result.json", config=config)


@pytest.mark.parametrize("key", ["Run ID", "1st", "app.kubernetes.io/part-of", "x" * 70])
def test_labels_follow_vertex_rules(key: str) -> None:
    for label_key, value in job_labels("statistics", {key: "Some Value/" + "v" * 70}).items():
        assert 1 <= len(label_key) <= 63 and label_key[0].islower(), label_key
        assert set(label_key) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-"), label_key
        assert len(value) <= 63 and set(value) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-"), value


def test_run_polls_until_success_and_returns_the_result(
    hook: CustomJobHook, config: VertexAIExecution, caplog: pytest.LogCaptureFixture
) -> None:
    client = FakeJobServiceClient(
        [JobState.JOB_STATE_RUNNING, JobState.JOB_STATE_RUNNING, JobState.JOB_STATE_SUCCEEDED]
    )
    sleeps: list[float] = []
    created: list[str] = []
    job = statistics_job(config)
    result = {"stage": "statistics", "statistics_uri": "gs://acme-ml/statistics/stats.pb"}
    log = logging.getLogger("test.vertex_ai")

    with (
        patch_client(client) as get_client,
        mock.patch.object(GCSHook, "download", autospec=True, return_value=json.dumps(result).encode()) as download,
        caplog.at_level(logging.INFO, logger=log.name),
    ):
        assert (
            run_custom_job(
                hook=hook,
                job=job,
                config=config,
                result_uri=RESULT_URI,
                log=log,
                sleep=sleeps.append,
                on_created=created.append,
            )
            == result
        )

    get_client.assert_called_once_with(hook, region="europe-west4")
    assert client.created is not None
    assert client.created.parent == "projects/acme-ml/locations/europe-west4"
    assert client.created.custom_job == CustomJob(job)
    assert created == [JOB_NAME]
    assert client.polled == [JOB_NAME] * 3
    assert sleeps == [45, 45, 45]

    gcs_hook = download.call_args.args[0]
    assert (gcs_hook.gcp_conn_id, gcs_hook.impersonation_chain) == ("tfpipe_gcp", config.impersonation_chain)
    assert download.call_args.kwargs == {
        "bucket_name": "acme-ml",
        "object_name": "chicago_taxi/span=2016-03/run=r1/statistics/result.json",
    }

    assert JOB_NAME in caplog.text
    assert (
        "https://console.cloud.google.com/vertex-ai/locations/europe-west4/training/1234567890/cpu?project=acme-ml"
        in caplog.text
    )
    assert "JOB_STATE_RUNNING" in caplog.text and "JOB_STATE_SUCCEEDED" in caplog.text


def test_failed_job_raises_its_error(hook: CustomJobHook, config: VertexAIExecution) -> None:
    message = "The replica workerpool0-0 exited with a non-zero status of 2."
    client = FakeJobServiceClient([JobState.JOB_STATE_RUNNING, JobState.JOB_STATE_FAILED], error_message=message)

    with (
        patch_client(client),
        mock.patch.object(GCSHook, "download", autospec=True) as download,
        pytest.raises(AirflowException, match="JOB_STATE_FAILED") as raised,
    ):
        run_custom_job(
            hook=hook,
            job=statistics_job(config),
            config=config,
            result_uri=RESULT_URI,
            log=logging.getLogger("test.vertex_ai"),
            sleep=lambda _: None,
        )

    assert message in str(raised.value)
    assert JOB_NAME in str(raised.value)
    download.assert_not_called()


def test_missing_result_file_is_reported(hook: CustomJobHook, config: VertexAIExecution) -> None:
    client = FakeJobServiceClient([JobState.JOB_STATE_SUCCEEDED])

    with (
        patch_client(client),
        mock.patch.object(GCSHook, "download", autospec=True, side_effect=NotFound("no such object")),
        pytest.raises(AirflowException, match="wrote no stage result"),
    ):
        run_custom_job(
            hook=hook,
            job=statistics_job(config),
            config=config,
            result_uri=RESULT_URI,
            log=logging.getLogger("test.vertex_ai"),
            sleep=lambda _: None,
        )


def test_cancel(hook: CustomJobHook) -> None:
    client = FakeJobServiceClient([])
    with patch_client(client) as get_client:
        cancel_custom_job(hook, JOB_NAME, "europe-west4")
    get_client.assert_called_once_with(hook, region="europe-west4")
    assert client.cancelled == [JOB_NAME]


@pytest.mark.parametrize("workers", [2, 4])
def test_distributed_job_has_a_chief_pool_and_a_worker_pool(config: VertexAIExecution, workers: int) -> None:
    single = statistics_job(config)
    job = build_custom_job(
        display_name="chicago_taxi_training.statistics.r1",
        stage="statistics",
        argv=ARGV,
        result_uri=RESULT_URI,
        config=config,
        labels={"pipeline": "chicago_taxi", "run_id": "scheduled__2016-03-01T00:00:00+00:00"},
        workers=workers,
    )

    chief, others = job["job_spec"]["worker_pool_specs"]
    assert chief == single["job_spec"]["worker_pool_specs"][0]  # pool 0: the one-worker job's only pool
    assert chief["replica_count"] == 1
    assert others["replica_count"] == workers - 1
    assert {key: value for key, value in others.items() if key != "replica_count"} == {
        "machine_spec": {"machine_type": "n1-highmem-8"},
        "container_spec": {
            "image_uri": IMAGE,
            "command": ["python", "-m", "tfpipe"],
            "args": ["statistics", *ARGV, "--result-file", RESULT_URI],
            "env": [{"name": name, "value": value} for name, value in STAGE_ENVIRONMENT.items()],
        },
    }
    assert others["container_spec"] is not chief["container_spec"]
    # Everything but the pools is as for one worker.
    assert {key: value for key, value in job.items() if key != "job_spec"} == {
        key: value for key, value in single.items() if key != "job_spec"
    }
    assert job["job_spec"]["service_account"] == single["job_spec"]["service_account"]

    proto = CustomJob(job)
    assert [pool.replica_count for pool in proto.job_spec.worker_pool_specs] == [1, workers - 1]
    for pool in proto.job_spec.worker_pool_specs:
        assert list(pool.container_spec.args)[-2:] == ["--result-file", RESULT_URI]
        assert pool.machine_spec.machine_type == "n1-highmem-8"


def test_one_worker_is_todays_job(config: VertexAIExecution) -> None:
    job = build_custom_job(
        display_name="chicago_taxi_training.statistics.r1",
        stage="statistics",
        argv=ARGV,
        result_uri=RESULT_URI,
        config=config,
        labels={"pipeline": "chicago_taxi", "run_id": "scheduled__2016-03-01T00:00:00+00:00"},
        workers=1,
    )
    assert job == statistics_job(config)
    assert len(job["job_spec"]["worker_pool_specs"]) == 1


def test_workers_must_be_positive(config: VertexAIExecution) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        build_custom_job(display_name="x", stage="train", argv=[], result_uri=RESULT_URI, config=config, workers=0)
