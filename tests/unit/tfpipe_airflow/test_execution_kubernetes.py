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
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from tfpipe.config import ContainerResources, KubernetesExecution
from tfpipe_airflow.execution.kubernetes import (
    COMPLETION_INDEX_KEY,
    TRAINING_JOB_LABEL,
    TrainingJobOperator,
    build_pod_operator,
    build_training_job_operator,
    build_training_service,
    chief_result,
    pod_labels,
    training_job_name,
)
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
# A DNS-1035 label (what a Service's name must be; a Job's and a hostname are DNS-1123 labels, looser).
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
TRAIN_ARGV = ["--examples-uri", "gs://acme-ml/examples", "--output-uri", "gs://acme-ml/model"]


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


# Distributed training: an Indexed Job of one pod per worker, and the headless Service naming them.


@pytest.mark.parametrize(
    ("dag_id", "task_id"),
    [
        ("chicago_taxi_training", "train"),
        ("2016_Backfill.Chicago-Taxi__Training_with_a_very_long_name_indeed_" + "x" * 120, "tuning.train_trial"),
        ("___", "___"),
        ("Grüße", "train"),
    ],
)
def test_training_job_name_is_a_valid_name_and_hostname_prefix(dag_id: str, task_id: str) -> None:
    name = training_job_name(dag_id=dag_id, task_id=task_id, run_id="manual__2016-03-01", map_index=-1, try_number=12)

    assert DNS_1035_LABEL.fullmatch(name), name
    assert name.startswith("job-") and name.endswith("-t12")
    assert len(f"{name}-999999") <= 63  # the hostname of pod 999999


def test_training_job_name_is_one_per_task_instance_try() -> None:
    base = {"dag_id": "chicago_taxi_training", "task_id": "train", "run_id": "manual__2016-03-01", "map_index": -1}
    name = training_job_name(**base, try_number=1)

    assert name == training_job_name(**base, try_number=1)
    assert name.startswith("job-chicago-taxi-training-train-")
    others = [
        training_job_name(**base, try_number=2),
        training_job_name(**{**base, "run_id": "manual__2016-04-01"}, try_number=1),
        training_job_name(**{**base, "map_index": 3}, try_number=1),
        # Differs only beyond the part that fits in the name.
        training_job_name(**{**base, "dag_id": "chicago_taxi_training" + "x" * 60 + "a"}, try_number=1),
        training_job_name(**{**base, "dag_id": "chicago_taxi_training" + "x" * 60 + "b"}, try_number=1),
    ]
    assert len({name, *others}) == 6


def test_training_service_is_headless_and_selects_the_job_pods(config: KubernetesExecution) -> None:
    service = build_training_service(
        job_name="job-chicago-taxi-training-train-1a2b3c4d-t1",
        namespace="ml-pipelines",
        stage="train",
        labels={"tfpipe/pipeline": "chicago_taxi"},
    )

    assert service.metadata.name == "job-chicago-taxi-training-train-1a2b3c4d-t1"
    assert service.metadata.namespace == "ml-pipelines"
    assert service.metadata.labels["tfpipe/stage"] == "train"
    assert service.spec.cluster_ip == "None"
    assert service.spec.selector == {TRAINING_JOB_LABEL: "job-chicago-taxi-training-train-1a2b3c4d-t1"}
    assert [(port.port, port.target_port) for port in service.spec.ports] == [(2222, 2222)]
    assert service.spec.publish_not_ready_addresses is True
    # What goes over the wire: the API's own field names.
    body = ApiClient().sanitize_for_serialization(service)
    assert body["spec"]["clusterIP"] == "None"
    assert body["spec"]["publishNotReadyAddresses"] is True


def build_training(config: KubernetesExecution, workers: int, job_name: str) -> TrainingJobOperator:
    return build_training_job_operator(
        task_id="train",
        job_name=job_name,
        stage="train",
        argv=TRAIN_ARGV,
        workers=workers,
        config=config,
        labels={"tfpipe/pipeline": "chicago_taxi"},
    )


@pytest.mark.parametrize("workers", [2, 4])
def test_training_job_request(config: KubernetesExecution, context: dict, workers: int) -> None:
    job_name = training_job_name(
        dag_id="chicago_taxi_training", task_id="train", run_id=context["run_id"], map_index=-1, try_number=2
    )
    operator = build_training(config, workers, job_name)
    job = operator.build_job_request_obj(context)
    service = build_training_service(job_name=job_name, namespace="ml-pipelines", stage="train")

    assert not operator.has_dag()
    assert (operator.deferrable, operator.wait_until_job_complete, operator.do_xcom_push) == (False, True, True)
    assert operator.unwrap_single is False
    assert job.metadata.name == job_name  # the name the Service and the worker list were built for
    assert job.metadata.namespace == "ml-pipelines"
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.completions == workers
    assert job.spec.parallelism == workers
    assert job.spec.backoff_limit == 0

    template = job.spec.template
    assert template.spec.subdomain == service.metadata.name
    assert template.spec.hostname is None  # Kubernetes sets `<job>-<index>` on each pod
    assert template.spec.restart_policy == "Never"
    assert template.spec.service_account_name == "tfpipe-runner"
    assert service.spec.selector.items() <= template.metadata.labels.items()
    assert template.metadata.labels["try_number"] == "2"

    base, sidecar = template.spec.containers
    assert sidecar.name == "airflow-xcom-sidecar"
    assert base.image == IMAGE
    assert base.command == ["python", "-m", "tfpipe"]
    assert base.args == ["train", *TRAIN_ARGV, "--result-file", "/airflow/xcom/return.json"]
    assert [(port.name, port.container_port) for port in base.ports] == [("tf-worker", 2222)]
    assert base.resources.requests == {"cpu": "4", "memory": "16Gi"}
    env = {item.name: item.value for item in base.env}
    assert env.items() >= STAGE_ENVIRONMENT.items()
    hosts = env["TFPIPE_WORKER_HOSTS"].split(",")
    assert len(hosts) == workers
    assert hosts[0] == f"{job_name}-0.{job_name}.ml-pipelines.svc:2222"
    for index, host in enumerate(hosts):
        hostname, subdomain, namespace, svc_port = host.split(".")
        assert (hostname, subdomain, namespace, svc_port) == (
            f"{job.metadata.name}-{index}",
            job_name,
            "ml-pipelines",
            "svc:2222",
        )
        assert len(hostname) <= 63

    body = ApiClient().sanitize_for_serialization(job)
    assert body["spec"]["completionMode"] == "Indexed"
    assert body["spec"]["template"]["spec"]["subdomain"] == job_name


def test_training_job_name_survives_a_long_odd_dag_id(config: KubernetesExecution, context: dict) -> None:
    dag_id = "2016_Backfill.Chicago-Taxi__Training_with_a_very_long_name_" + "x" * 200
    job_name = training_job_name(
        dag_id=dag_id, task_id="tuning.train_trial", run_id=context["run_id"], map_index=7, try_number=1
    )
    job = build_training(config, 3, job_name).build_job_request_obj(context)

    assert job.metadata.name == job_name
    assert DNS_1035_LABEL.fullmatch(job.metadata.name)
    assert job.spec.template.spec.subdomain == job_name
    assert len(f"{job.metadata.name}-2") <= 63


def test_training_needs_two_workers(config: KubernetesExecution) -> None:
    with pytest.raises(ValueError, match="at least 2 workers"):
        build_training(config, 1, "job-x-1a2b3c4d-t1")


def worker_pod(name: str, index: int | None) -> k8s.V1Pod:
    annotations = {COMPLETION_INDEX_KEY: str(index)} if index is not None else {}
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name, namespace="ml-pipelines", annotations=annotations, labels={"try_number": "1"}
        )
    )


def test_pods_are_searched_until_the_job_has_made_all_of_them(
    config: KubernetesExecution, context: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = build_training(config, 3, "job-x-1a2b3c4d-t1")
    operator.pod_search_interval_seconds = 0
    operator.job = operator.build_job_request_obj(context)
    made = [worker_pod("job-x-1a2b3c4d-t1-2-abcde", 2), worker_pod("job-x-1a2b3c4d-t1-0-fghij", 0)]
    # The provider's own search would stop at the fourth listing, with two of the three pods.
    listings = [[], made[:1], made[:1], made, made, [*made, worker_pod("job-x-1a2b3c4d-t1-1-klmno", 1)]]
    selectors: list[str] = []

    def list_namespaced_pod(*, namespace: str, label_selector: str) -> k8s.V1PodList:
        assert namespace == "ml-pipelines"
        selectors.append(label_selector)
        return k8s.V1PodList(items=listings.pop(0))

    monkeypatch.setattr(operator.client, "list_namespaced_pod", list_namespaced_pod)
    pods = operator.get_pods(pod_request_obj=operator.pod_request_obj, context=context)

    assert [pod.metadata.name for pod in pods] == [
        "job-x-1a2b3c4d-t1-0-fghij",
        "job-x-1a2b3c4d-t1-1-klmno",
        "job-x-1a2b3c4d-t1-2-abcde",
    ]
    assert len(selectors) == 6
    assert f"{TRAINING_JOB_LABEL}=job-x-1a2b3c4d-t1" in selectors[0].split(",")


def test_pod_search_gives_up_after_the_startup_timeout(
    config: KubernetesExecution, context: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = build_training(config.model_copy(update={"startup_timeout_seconds": 1}), 2, "job-x-1a2b3c4d-t1")
    operator.pod_search_interval_seconds = 0.2
    operator.job = operator.build_job_request_obj(context)
    monkeypatch.setattr(
        operator.client,
        "list_namespaced_pod",
        lambda **_: k8s.V1PodList(items=[worker_pod("job-x-1a2b3c4d-t1-0-fghij", 0)]),
    )
    with pytest.raises(Exception, match="made 1 of the 2 pods of job job-x-1a2b3c4d-t1 in 1s"):
        operator.get_pods(pod_request_obj=operator.pod_request_obj, context=context)


def test_the_result_is_the_chief_pods() -> None:
    pods = [worker_pod("w-1", 1), worker_pod("w-0", 0), worker_pod("w-2", 2)]
    assert chief_result(pods, [None, {"model_uri": "gs://acme-ml/model"}, None]) == {"model_uri": "gs://acme-ml/model"}
    with pytest.raises(Exception, match="chief pod w-0 finished without writing a stage result"):
        chief_result(pods, [{"model_uri": "from a worker"}, None, None])
    with pytest.raises(Exception, match="no chief"):
        chief_result([worker_pod("w-1", 1), worker_pod("w-x", None)], [None, None])
