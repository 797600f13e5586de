"""Run an ML stage as a Kubernetes pod, with the same command line as a local run.

The stage writes its result to the file the XCom sidecar reads, so the pod operator returns the same
dict a local run prints. The KubernetesPodOperator is not a task of the DAG: our own operator builds it
and calls it from its execute(), so it uses the running task's context (labels, XCom, task state).
"""

from __future__ import annotations

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from kubernetes.client import models as k8s

from tfpipe.config import KubernetesExecution
from tfpipe_airflow.hooks.ml_stage import STAGE_ENVIRONMENT

STAGE_COMMAND = ["python", "-m", "tfpipe"]
# The XCom sidecar returns this file's JSON as the operator's result.
RESULT_FILE = f"{PodDefaults.XCOM_MOUNT_PATH}/return.json"


def pod_labels(stage: str, labels: dict[str, str] | None = None) -> dict[str, str]:
    """Caller's labels plus tfpipe's own, with every value made a valid Kubernetes label value."""
    merged = {**(labels or {}), "app.kubernetes.io/part-of": "tfpipe", "tfpipe/stage": stage}
    # make_safe_label_value can leave a leading "-" when nothing of the value survives.
    return {key: make_safe_label_value(str(value)).lstrip("-") for key, value in merged.items()}


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
    resources = {"cpu": config.resources.cpu, "memory": config.resources.memory}
    return KubernetesPodOperator(
        task_id=task_id,
        kubernetes_conn_id=config.kubernetes_conn_id,
        namespace=config.namespace,
        service_account_name=config.service_account_name,
        image=config.image,
        image_pull_policy=config.image_pull_policy,
        cmds=list(STAGE_COMMAND),
        arguments=[stage, *argv, "--result-file", RESULT_FILE],
        # V1EnvVar objects, not a dict: the dict form is only converted when templates are rendered,
        # which never happens for an operator run from another operator's execute().
        env_vars=[k8s.V1EnvVar(name=name, value=value) for name, value in STAGE_ENVIRONMENT.items()],
        container_resources=k8s.V1ResourceRequirements(requests=dict(resources), limits=dict(resources)),
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
