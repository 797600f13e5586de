"""Run an ML stage as a Kubernetes pod, with the same command line as a local run.

The stage writes its result to the file the XCom sidecar reads, so the pod operator returns the same
dict a local run prints. The KubernetesPodOperator is not a task of the DAG: our own operator builds it
and calls it from its execute(), so it uses the running task's context (labels, XCom, task state).

A stage with several workers (distributed training) runs as an Indexed Job of one pod per worker,
plus a headless Service that gives each pod a stable DNS name; the stage reads the worker list from
TFPIPE_WORKER_HOSTS and its own index from JOB_COMPLETION_INDEX.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.job import JOB_NAME_PREFIX, KubernetesJobOperator
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException
from kubernetes.client import models as k8s
from kubernetes.client.rest import ApiException

from tfpipe.config import KubernetesExecution
from tfpipe_airflow.hooks.ml_stage import STAGE_ENVIRONMENT

STAGE_COMMAND = ["python", "-m", "tfpipe"]
# The XCom sidecar returns this file's JSON as the operator's result.
RESULT_FILE = f"{PodDefaults.XCOM_MOUNT_PATH}/return.json"

# Distributed training: the port every worker's gRPC server listens on, and the variable listing them.
TRAINING_PORT = 2222
WORKER_HOSTS_VARIABLE = "TFPIPE_WORKER_HOSTS"
# Set on the training pods (value: the Job's name): the Service selects them by it, and it keeps the pods
# of another Job of the same task (an earlier try) out of the provider's pod search.
TRAINING_JOB_LABEL = "tfpipe/training-job"
# Set by the Job controller on every pod of an Indexed Job (an annotation; also a label on recent clusters).
COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
# A pod of an Indexed Job gets the hostname `<job>-<index>`, which must be a DNS label (<= 63
# characters): this leaves room for an index of up to six digits.
_TRAINING_JOB_NAME_MAX_LENGTH = 56
# The operator deletes the pods when it is done; the finished Job itself is removed by Kubernetes.
_FINISHED_JOB_TTL_SECONDS = 3600


def pod_labels(stage: str, labels: dict[str, str] | None = None) -> dict[str, str]:
    """Caller's labels plus tfpipe's own, with every value made a valid Kubernetes label value."""
    merged = {**(labels or {}), "app.kubernetes.io/part-of": "tfpipe", "tfpipe/stage": stage}
    # make_safe_label_value can leave a leading "-" when nothing of the value survives.
    return {key: make_safe_label_value(str(value)).lstrip("-") for key, value in merged.items()}


def _stage_env(extra: dict[str, str] | None = None) -> list[k8s.V1EnvVar]:
    # V1EnvVar objects, not a dict: the dict form is only converted when templates are rendered,
    # which never happens for an operator run from another operator's execute().
    return [k8s.V1EnvVar(name=name, value=value) for name, value in {**STAGE_ENVIRONMENT, **(extra or {})}.items()]


def _container_resources(config: KubernetesExecution) -> k8s.V1ResourceRequirements:
    resources = {"cpu": config.resources.cpu, "memory": config.resources.memory}
    return k8s.V1ResourceRequirements(requests=dict(resources), limits=dict(resources))


def _stage_container(stage: str, argv: list[str], config: KubernetesExecution) -> dict[str, Any]:
    """What a pod and a training Job's pods share: where, which image, and the stage's command line."""
    return {
        "kubernetes_conn_id": config.kubernetes_conn_id,
        "namespace": config.namespace,
        "service_account_name": config.service_account_name,
        "image": config.image,
        "image_pull_policy": config.image_pull_policy,
        "cmds": list(STAGE_COMMAND),
        "arguments": [stage, *argv, "--result-file", RESULT_FILE],
    }


def build_pod_operator(
    *,
    task_id: str,
    stage: str,
    argv: list[str],
    config: KubernetesExecution,
    labels: dict[str, str] | None = None,
) -> KubernetesPodOperator:
    """A pod operator that runs `python -m tfpipe <stage> <argv...>` and returns the stage's result.

    `task_id` should be the running task's id: the pod name is derived from it.
    """
    return KubernetesPodOperator(
        task_id=task_id,
        **_stage_container(stage, argv, config),
        env_vars=_stage_env(),
        container_resources=_container_resources(config),
        labels=pod_labels(stage, labels),
        startup_timeout_seconds=config.startup_timeout_seconds,
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_pod",
        # Reattach to the running pod after a worker restart. On Airflow 3.3 `durable` replaces the
        # deprecated `reattach_on_restart` and keeps the pod's identity in the task's state store.
        durable=True,
        # Deferring would resume the outer task, not this operator: always wait in execute().
        deferrable=False,
        allow_nested_operators=True,
    )


def training_job_name(*, dag_id: str, task_id: str, run_id: str, map_index: int, try_number: int) -> str:
    """The name of a training Job and of its Service: readable, one per task instance try.

    The hash keeps runs and mapped instances of the same task apart however much of the readable part
    is cut; the try makes a retry start a fresh Job. The result is a DNS-1035 label (Services need one:
    lowercase, starting with a letter) short enough for the pods' hostnames `<job>-<index>`.
    """
    identity = hashlib.sha256(f"{dag_id}\n{task_id}\n{run_id}\n{map_index}".encode()).hexdigest()[:8]
    suffix = f"{identity}-t{try_number}"
    readable = re.sub(r"[^a-z0-9]+", "-", f"{dag_id}-{task_id}".lower()).strip("-")
    room = _TRAINING_JOB_NAME_MAX_LENGTH - len(JOB_NAME_PREFIX) - len(suffix) - 1
    readable = readable[: max(room, 0)].rstrip("-")
    # The provider prefixes every Job's name with JOB_NAME_PREFIX; the name includes it from the start.
    return JOB_NAME_PREFIX + "-".join(part for part in (readable, suffix) if part)


def worker_hosts(*, job_name: str, namespace: str, workers: int) -> list[str]:
    """`host:port` of each worker, index 0 (the chief) first: the DNS names the headless Service gives them."""
    # The Service is named like the Job, and is each pod's subdomain.
    return [f"{job_name}-{index}.{job_name}.{namespace}.svc:{TRAINING_PORT}" for index in range(workers)]


def build_training_service(
    *, job_name: str, namespace: str, stage: str, labels: dict[str, str] | None = None
) -> k8s.V1Service:
    """The headless Service that gives each pod of the training Job its DNS name (see worker_hosts)."""
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=k8s.V1ObjectMeta(name=job_name, namespace=namespace, labels=pod_labels(stage, labels)),
        spec=k8s.V1ServiceSpec(
            cluster_ip="None",  # headless: DNS resolves to the pods themselves
            selector={TRAINING_JOB_LABEL: job_name},
            ports=[k8s.V1ServicePort(name="tf-worker", port=TRAINING_PORT, target_port=TRAINING_PORT)],
            # Workers look each other up while they start, before Kubernetes counts them as ready.
            publish_not_ready_addresses=True,
        ),
    )


def _completion_index(pod: k8s.V1Pod) -> int | None:
    metadata = pod.metadata
    value = (metadata.annotations or {}).get(COMPLETION_INDEX_KEY) or (metadata.labels or {}).get(COMPLETION_INDEX_KEY)
    return int(value) if value is not None else None


class TrainingJobOperator(KubernetesJobOperator):
    """KubernetesJobOperator that finds every pod of its Job before waiting on them, the chief first.

    The provider's pod search lists a few times without pausing, so right after the Job is created it can
    return only the pods the Job controller has made so far, and the chief's result would be missed.
    """

    pod_search_interval_seconds: float = 2.0

    def get_pods(
        self, pod_request_obj: k8s.V1Pod, context: Context, *, exclude_checked: bool = True
    ) -> Sequence[k8s.V1Pod]:
        selector = self._build_find_pod_label_selector(context, exclude_checked=exclude_checked)
        namespace = pod_request_obj.metadata.namespace
        deadline = time.monotonic() + self.startup_timeout_seconds
        while True:
            pods = self.client.list_namespaced_pod(namespace=namespace, label_selector=selector).items
            if len(pods) >= self.parallelism:
                break
            if time.monotonic() >= deadline:
                raise AirflowException(
                    f"Kubernetes made {len(pods)} of the {self.parallelism} pods of job {self.job.metadata.name} "
                    f"in {self.startup_timeout_seconds}s"
                )
            time.sleep(self.pod_search_interval_seconds)
        pods = sorted(pods, key=lambda pod: (_completion_index(pod) is None, _completion_index(pod) or 0))
        for pod in pods:
            self.log_matching_pod(pod=pod, context=context)
        return pods


def build_training_job_operator(
    *,
    task_id: str,
    job_name: str,
    stage: str,
    argv: list[str],
    workers: int,
    config: KubernetesExecution,
    labels: dict[str, str] | None = None,
) -> TrainingJobOperator:
    """A job operator that runs `python -m tfpipe <stage> <argv...>` on `workers` pods and waits for them.

    The pods are an Indexed Job named `job_name` (from training_job_name), each the subdomain of the Service
    of the same name (build_training_service), so pod `i` is `<job_name>-<i>.<job_name>.<namespace>.svc`.
    Every pod gets `--result-file` pointing at its XCom sidecar's file, but only the chief (index 0) writes
    it; execute() returns the list of every pod's XCom (None for the others), in the order of `pods`.
    """
    if workers < 2:
        raise ValueError(f"a training Job needs at least 2 workers, got {workers}; run one pod instead")
    hosts = worker_hosts(job_name=job_name, namespace=config.namespace, workers=workers)
    return TrainingJobOperator(
        task_id=task_id,
        name=job_name.removeprefix(JOB_NAME_PREFIX),  # the provider adds the prefix back
        random_name_suffix=False,  # the Service and the worker list were made for exactly this name
        **_stage_container(stage, argv, config),
        env_vars=_stage_env({WORKER_HOSTS_VARIABLE: ",".join(hosts)}),
        ports=[k8s.V1ContainerPort(name="tf-worker", container_port=TRAINING_PORT)],
        container_resources=_container_resources(config),
        labels={**pod_labels(stage, labels), TRAINING_JOB_LABEL: job_name},
        subdomain=job_name,
        completion_mode="Indexed",  # JOB_COMPLETION_INDEX and the hostname `<job>-<index>` on each pod
        completions=workers,
        parallelism=workers,
        # One lost worker stalls the others: fail the Job (and the task, for Airflow to retry) instead of
        # replacing the pod, whose XCom sidecar nobody would stop, so the Job would never finish.
        backoff_limit=0,
        ttl_seconds_after_finished=_FINISHED_JOB_TTL_SECONDS,
        wait_until_job_complete=True,
        startup_timeout_seconds=config.startup_timeout_seconds,
        do_xcom_push=True,
        unwrap_single=False,  # always a list, in the order of the operator's pods
        get_logs=True,
        on_finish_action="delete_pod",
        # Deferring would resume the outer task, not this operator: always wait in execute().
        deferrable=False,
        allow_nested_operators=True,
    )


def chief_result(pods: Sequence[k8s.V1Pod], results: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """The stage result the chief (completion index 0) wrote, from the job operator's per-pod XComs."""
    for pod, result in zip(pods, results, strict=True):
        if _completion_index(pod) == 0:
            if result is None:
                raise AirflowException(f"the chief pod {pod.metadata.name} finished without writing a stage result")
            return result
    raise AirflowException(f"no chief (completion index 0) among pods {[pod.metadata.name for pod in pods]}")


def run_training_job(
    *, job_operator: TrainingJobOperator, service: k8s.V1Service, context: Context, log: logging.Logger
) -> dict[str, Any]:
    """Create the Service, run the Job to completion, delete the Service; return the chief's result.

    The result comes back as the chief pod's XCom (its sidecar's file), like a single pod's.
    """
    core = job_operator.hook.core_v1_client
    name, namespace = service.metadata.name, service.metadata.namespace
    try:
        core.create_namespaced_service(namespace=namespace, body=service)
    except ApiException as error:
        if error.status != 409:
            raise
        # Same name, so the same task instance try: a restarted attempt may find its own Service.
        log.info("Service %s/%s already exists; using it", namespace, name)
    try:
        results = job_operator.execute(context)
    finally:
        try:
            core.delete_namespaced_service(name=name, namespace=namespace)
        except ApiException as error:
            # A left-over headless Service costs nothing; it must not hide the Job's own outcome.
            if error.status != 404:
                log.warning("Could not delete Service %s/%s: %s", namespace, name, error)
    return chief_result(job_operator.pods, results)
