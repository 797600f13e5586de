"""Run an ML stage as a Vertex AI custom job, with the same command line as a local run.

A custom job's output cannot be read back from the job itself, so the stage writes its result to a
GCS object (`--result-file gs://...`) and we read that object once the job has succeeded.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from airflow.providers.google.cloud.hooks.gcs import GCSHook
from airflow.providers.google.cloud.hooks.vertex_ai.custom_job import CustomJobHook
from airflow.providers.google.cloud.links.base import BASE_LINK
from airflow.providers.google.cloud.links.vertex_ai import VERTEX_AI_CUSTOM_JOB_LINK
from airflow.sdk.exceptions import AirflowException
from google.api_core.exceptions import NotFound
from google.api_core.retry import Retry
from google.cloud.aiplatform_v1.types import JobState

from tfpipe.config import VertexAIExecution
from tfpipe_airflow.hooks.ml_stage import STAGE_ENVIRONMENT

STAGE_COMMAND = ["python", "-m", "tfpipe"]
FAILED_STATES = frozenset(
    {
        JobState.JOB_STATE_FAILED,
        JobState.JOB_STATE_CANCELLED,
        JobState.JOB_STATE_EXPIRED,
        # Terminal too; the provider's own wait treats it as a failure.
        JobState.JOB_STATE_PARTIALLY_SUCCEEDED,
    }
)
# get_custom_job has no default retry: one transient error must not fail a job that runs for hours.
_POLL_RETRY = Retry(initial=1.0, maximum=30.0, timeout=300.0)
_DISPLAY_NAME_MAX_LENGTH = 128
_LABEL_MAX_LENGTH = 63


def _label_text(text: str) -> str:
    # Vertex labels: lowercase letters, digits, "_" and "-"; at most 63 characters.
    return re.sub(r"[^a-z0-9_-]", "-", str(text).lower())[:_LABEL_MAX_LENGTH]


def job_labels(stage: str, labels: dict[str, str] | None = None) -> dict[str, str]:
    """Caller's labels plus tfpipe's own, keys and values made valid Vertex AI labels."""
    merged = {**(labels or {}), "part-of": "tfpipe", "tfpipe-stage": stage}
    result = {}
    for key, value in merged.items():
        safe_key = _label_text(key)
        if not safe_key[:1].isalpha():  # keys must start with a letter
            safe_key = _label_text(f"l-{safe_key}")
        result[safe_key] = _label_text(value)
    return result


def _split_gcs_uri(uri: str) -> tuple[str, str]:
    match = re.fullmatch(r"gs://([^/]+)/(.+)", uri)
    if match is None:
        raise ValueError(f"result_uri must be a gs://bucket/object URI the job can write to, got {uri!r}")
    return match.group(1), match.group(2)


def build_custom_job(
    *,
    display_name: str,
    stage: str,
    argv: list[str],
    result_uri: str,
    config: VertexAIExecution,
    labels: dict[str, str] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """The CustomJob request body (dict form of `aiplatform_v1.types.CustomJob`) that runs one stage.

    With `workers` > 1 (distributed training) the job has two worker pools running the same container:
    pool 0 is one replica, the chief, and pool 1 the other `workers - 1`. Vertex AI sets TF_CONFIG on
    each replica to say which one it is; every replica gets `--result-file`, only the chief writes it.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    _split_gcs_uri(result_uri)  # fail before submitting: a local path would be lost with the worker

    def worker_pool(replica_count: int) -> dict[str, Any]:
        return {
            "replica_count": replica_count,
            "machine_spec": {"machine_type": config.machine_type},
            "container_spec": {
                "image_uri": config.image_uri,
                "command": list(STAGE_COMMAND),
                "args": [stage, *argv, "--result-file", result_uri],
                "env": [{"name": name, "value": value} for name, value in STAGE_ENVIRONMENT.items()],
            },
        }

    worker_pools = [worker_pool(1)]
    if workers > 1:
        worker_pools.append(worker_pool(workers - 1))
    job_spec: dict[str, Any] = {"worker_pool_specs": worker_pools}
    if config.service_account:
        job_spec["service_account"] = config.service_account
    return {
        "display_name": display_name[:_DISPLAY_NAME_MAX_LENGTH],  # longer names are rejected
        "job_spec": job_spec,
        "labels": job_labels(stage, labels),
    }


def console_url(job_name: str) -> str:
    """Cloud console page of a job named projects/<project>/locations/<region>/customJobs/<id>."""
    parts = job_name.split("/")
    return BASE_LINK + VERTEX_AI_CUSTOM_JOB_LINK.format(region=parts[3], custom_job_id=parts[5], project_id=parts[1])


def run_custom_job(
    *,
    hook: CustomJobHook,
    job: dict[str, Any],
    config: VertexAIExecution,
    result_uri: str,
    log: logging.Logger,
    sleep: Callable[[float], None] = time.sleep,
    on_created: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Create the job, wait for it to finish and return the stage result it wrote to `result_uri`.

    `on_created` gets the job's name as soon as it exists, so that on_kill can cancel it while we wait.
    """
    client = hook.get_job_service_client(region=config.region)
    parent = f"projects/{config.project_id}/locations/{config.region}"
    current = client.create_custom_job(parent=parent, custom_job=job)
    name = current.name
    if on_created is not None:
        on_created(name)
    log.info("Vertex AI custom job %s created: %s", name, console_url(name))
    state = current.state
    while state != JobState.JOB_STATE_SUCCEEDED and state not in FAILED_STATES:
        sleep(config.poll_interval_seconds)
        current = client.get_custom_job(name=name, retry=_POLL_RETRY)
        if current.state != state:
            log.info("Vertex AI custom job %s is %s", name, current.state.name)
        state = current.state
    if state != JobState.JOB_STATE_SUCCEEDED:
        message = current.error.message or "no error message"
        raise AirflowException(f"Vertex AI custom job {name} ended {state.name}: {message}")
    bucket, object_name = _split_gcs_uri(result_uri)
    gcs = GCSHook(gcp_conn_id=config.gcp_conn_id, impersonation_chain=config.impersonation_chain)
    try:
        data = gcs.download(bucket_name=bucket, object_name=object_name)
    except NotFound:
        raise AirflowException(
            f"Vertex AI custom job {name} succeeded but wrote no stage result to {result_uri}"
        ) from None
    return json.loads(data)


def cancel_custom_job(hook: CustomJobHook, name: str, region: str) -> None:
    """Ask Vertex AI to cancel a job (for on_kill); cancellation is asynchronous and best effort."""
    hook.get_job_service_client(region=region).cancel_custom_job(name=name)
