"""The pod our Kubernetes mode asks for, built by the provider's own code from a real operator.

No cluster: the connection carries a kubeconfig for an unreachable server, which the client loads
without connecting, and building the pod request makes no API call.
"""

from __future__ import annotations

import json
import re
import warnings
from types import SimpleNamespace

import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from tfpipe.config import ContainerResources, KubernetesExecution
from tfpipe_airflow.execution.kubernetes import build_pod_operator, pod_labels
from tfpipe_airflow.hooks.ml_stage import STAGE_ENVIRONMENT

IMAGE = "europe-docker.pkg.dev/acme/ml/tfpipe-ml:1.4.2"
KUBE_CONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "test", "cluster": {"server": "https://kubernetes.invalid:6443"}}],
    "users": [{"name": "test", "user": {"token": "not-a-real-token"}}],
    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    "current-context": "test",
}
# A Kubernetes label value: empty, or alphanumeric at both ends with "-", "_", "." between; <= 63 chars.
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> KubernetesExecution:
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFPIPE_K8S", json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": KUBE_CONFIG}})
    )
    return KubernetesExecution(
        image=IMAGE,
        namespace="ml-pipelines",
        service_account_name="tfpipe-runner",
        kubernetes_conn_id="tfpipe_k8s",
        image_pull_policy="Always",
        resources=ContainerResources(cpu="4", memory="16Gi"),
        startup_timeout_seconds=900,
    )


@pytest.fixture
def context() -> dict:
    """What build_pod_request_obj reads from a task context: ti ids, run_id, and dag (for a legacy subdag check)."""
    ti = SimpleNamespace(dag_id="chicago_taxi_training", task_id="statistics", map_index=-1, try_number=2)
    return {"ti": ti, "run_id": "scheduled__2016-03-01T00:00:00+00:00", "dag": SimpleNamespace()}


def build(config: KubernetesExecution) -> KubernetesPodOperator:
    return build_pod_operator(
        task_id="statistics",
        stage="statistics",
        argv=["--input-uri", "gs://acme-ml/examples", "--output-uri", "gs://acme-ml/statistics"],
        config=config,
        labels={"tfpipe/pipeline": "chicago_taxi", "tfpipe/run": "scheduled__2016-03-01T00:00:00+00:00"},
    )


def test_operator_runs_nested_and_synchronously(config: KubernetesExecution) -> None:
    with warnings.catch_warnings():
        # The deprecated reattach_on_restart would warn here; durable must not.
        warnings.simplefilter("error")
        operator = build(config)

    assert not operator.has_dag()
    assert operator.deferrable is False
    assert operator.durable is True
    assert operator.do_xcom_push is True
    assert operator.get_logs is True
    assert operator.on_finish_action.value == "delete_pod"
    assert operator.kubernetes_conn_id == "tfpipe_k8s"
    assert operator.startup_timeout_seconds == 900


def test_pod_request(config: KubernetesExecution, context: dict) -> None:
    pod = build(config).build_pod_request_obj(context)

    assert pod.metadata.namespace == "ml-pipelines"
    assert pod.metadata.name.startswith("statistics-")
    assert len(pod.metadata.name) <= 63
    assert pod.spec.service_account_name == "tfpipe-runner"
    assert pod.spec.restart_policy == "Never"

    base, sidecar = pod.spec.containers
    assert base.name == "base"
    assert base.image == IMAGE
    assert base.image_pull_policy == "Always"
    assert base.command == ["python", "-m", "tfpipe"]
    assert base.args == [
        "statistics",
        "--input-uri",
        "gs://acme-ml/examples",
        "--output-uri",
        "gs://acme-ml/statistics",
        "--result-file",
        "/airflow/xcom/return.json",
    ]
    assert base.resources.requests == {"cpu": "4", "memory": "16Gi"}
    assert base.resources.limits == {"cpu": "4", "memory": "16Gi"}
    env = {item.name: item.value for item in base.env}
    assert env == STAGE_ENVIRONMENT  # the same environment as a local run
    assert env.items() >= {"TF_USE_LEGACY_KERAS": "1", "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "1"}.items()

    # The sidecar shares /airflow/xcom with the stage and hands back the result file.
    assert sidecar.name == "airflow-xcom-sidecar"
    assert [mount.mount_path for mount in base.volume_mounts] == ["/airflow/xcom"]
    assert [mount.mount_path for mount in sidecar.volume_mounts] == ["/airflow/xcom"]

    labels = pod.metadata.labels
    assert labels["app.kubernetes.io/part-of"] == "tfpipe"
    assert labels["tfpipe/stage"] == "statistics"
    assert labels["tfpipe/pipeline"] == "chicago_taxi"
    # The provider's own labels come from the running task, which is how it finds the pod again.
    assert labels["dag_id"] == "chicago_taxi_training"
    assert labels["task_id"] == "statistics"
    assert labels["try_number"] == "2"
    assert labels["airflow_kpo_in_cluster"] == "False"  # the connection's kubeconfig was used
    for key, value in labels.items():
        assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), (key, value)


@pytest.mark.parametrize(
    "value",
    ["scheduled__2016-03-01T00:00:00+00:00", "x" * 80, "--", "span=2016-03", "Grüße"],
)
def test_label_values_are_made_valid(value: str) -> None:
    safe = pod_labels("statistics", {"tfpipe/odd": value})["tfpipe/odd"]
    assert len(safe) <= 63 and LABEL_VALUE.fullmatch(safe)
