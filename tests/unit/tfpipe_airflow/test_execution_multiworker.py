"""RunMLStageOperator with several workers (distributed training), in each execution mode.

Local mode runs a fake interpreter that records its command line. Kubernetes mode runs the real job
operator against a fake cluster: only the API clients (and the exec/log streams of the pods) are
replaced, so the Service and Job our code asks for, and the way the chief's result comes back, are
what is checked. Vertex AI mode submits through a fake JobServiceClient.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from airflow.providers.cncf.kubernetes.utils.pod_manager import EMPTY_XCOM_RESULT, PodManager
from airflow.providers.google.cloud.hooks.gcs import GCSHook
from airflow.providers.google.cloud.hooks.vertex_ai.custom_job import CustomJobHook
from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException
from google.cloud.aiplatform_v1.types import JobState
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from kubernetes.client.rest import ApiException

from tests.unit.tfpipe_airflow.test_execution_kubernetes import KUBE_CONFIG
from tests.unit.tfpipe_airflow.test_execution_vertex_ai import FakeJobServiceClient
from tfpipe.config import ExecutionConfig
from tfpipe_airflow.execution.kubernetes import COMPLETION_INDEX_KEY, training_job_name
from tfpipe_airflow.operators.ml_stage import RunMLStageOperator

IMAGE = "europe-docker.pkg.dev/acme/ml/tfpipe-ml:1.4.2"
DAG_ID = "chicago_taxi_training"
RUN_ID = "scheduled__2016-03-01T00:00:00+00:00"
MODEL = {"stage": "train", "model_uri": "gs://acme-ml/chicago_taxi/span=2016-03/run=r1/model"}


def train_operator(execution: dict[str, Any], workers: int, result_uri: str | None = None) -> RunMLStageOperator:
    with DAG(dag_id=DAG_ID, schedule=None):
        return RunMLStageOperator(
            task_id="train",
            stage="train",
            execution=ExecutionConfig.model_validate(execution),
            arguments={"examples_uri": "gs://acme-ml/examples", "epochs": 3},
            result_uri=result_uri,
            workers=workers,
        )


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        train_operator({"local": {"python": "python3"}}, workers=0)


# Local: the stage starts its workers itself.


@pytest.mark.parametrize(("workers", "workers_argv"), [(2, ["--workers", "2"]), (1, [])])
def test_local_mode_asks_the_stage_for_its_workers(tmp_path: Path, workers: int, workers_argv: list[str]) -> None:
    recorded = tmp_path / "argv"
    python = tmp_path / "fake-python"
    python.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" > {recorded}\necho 'TFPIPE_RESULT {json.dumps(MODEL)}'\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    result_file = tmp_path / "result.json"
    operator = train_operator({"local": {"python": str(python)}}, workers=workers, result_uri=str(result_file))

    assert operator.execute({"ti": mock.MagicMock()}) == MODEL
    assert recorded.read_text().splitlines() == [
        "-m",
        "tfpipe",
        "train",
        "--examples-uri",
        "gs://acme-ml/examples",
        "--epochs",
        "3",
        *workers_argv,
        "--result-file",
        str(result_file),
    ]


# Kubernetes: an Indexed Job of one pod per worker, and a headless Service naming them.


class FakeCluster:
    """The Kubernetes API as the training run uses it, for one namespace.

    Creating the Job makes its pods at once; each pod's stage container has exited with `exit_codes[i]`
    and its XCom sidecar runs until killed. The Job ends with `job_condition`.
    """

    def __init__(self, workers: int, xcoms: dict[int, str], exit_codes: dict[int, int] | None = None) -> None:
        self.api_client = ApiClient()  # the hook serializes the Job with its client's api_client
        self.workers = workers
        self.xcoms = xcoms
        self.exit_codes = exit_codes or {}
        self.job_condition = "Complete"
        self.on_job_status: Any = None
        self.calls: list[tuple[str, str]] = []
        self.services: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, k8s.V1Pod] = {}
        self.deleted_jobs: list[dict[str, Any]] = []
        self.logs_of: list[str] = []

    # CoreV1Api

    def create_namespaced_service(self, *, namespace: str, body: k8s.V1Service) -> k8s.V1Service:
        name = body.metadata.name
        self.calls.append(("create_namespaced_service", name))
        if name in self.services:
            raise ApiException(status=409, reason="AlreadyExists")
        assert namespace == body.metadata.namespace == "ml-pipelines"
        self.services[name] = self.api_client.sanitize_for_serialization(body)
        return body

    def delete_namespaced_service(self, *, name: str, namespace: str) -> None:
        self.calls.append(("delete_namespaced_service", name))
        if self.services.pop(name, None) is None:
            raise ApiException(status=404, reason="NotFound")

    def list_namespaced_pod(self, *, namespace: str, label_selector: str) -> k8s.V1PodList:
        self.calls.append(("list_namespaced_pod", label_selector))
        matching = [pod for pod in self.pods.values() if _selects(label_selector, pod.metadata.labels)]
        # Not in index order: the chief must be found by its index.
        return k8s.V1PodList(items=sorted(matching, key=lambda pod: pod.metadata.name, reverse=True))

    def read_namespaced_pod(self, name: str, namespace: str) -> k8s.V1Pod:
        return self.pods[name]

    def patch_namespaced_pod(self, *, name: str, namespace: str, body: dict[str, Any]) -> k8s.V1Pod:
        self.pods[name].metadata.labels.update(body["metadata"]["labels"])
        return self.pods[name]

    def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
        self.calls.append(("delete_namespaced_pod", name))

    # BatchV1Api

    def create_namespaced_job(self, *, body: dict[str, Any], namespace: str, **_: Any) -> k8s.V1Job:
        name = body["metadata"]["name"]
        self.calls.append(("create_namespaced_job", name))
        self.jobs[name] = body
        template = body["spec"]["template"]
        for index in range(body["spec"]["completions"]):
            pod_name = f"{name}-{index}-x{index}z"
            self.pods[pod_name] = k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(
                    name=pod_name,
                    namespace=namespace,
                    labels=dict(template["metadata"]["labels"]),
                    annotations={COMPLETION_INDEX_KEY: str(index)},
                ),
                spec=k8s.V1PodSpec(
                    containers=[
                        k8s.V1Container(name=container["name"]) for container in template["spec"]["containers"]
                    ],
                    hostname=f"{name}-{index}",
                    subdomain=template["spec"]["subdomain"],
                ),
                status=self._status(index, sidecar_running=True),
            )
        return k8s.V1Job(metadata=k8s.V1ObjectMeta(name=name, namespace=namespace))

    def read_namespaced_job_status(self, *, name: str, namespace: str, **_: Any) -> k8s.V1Job:
        if self.on_job_status is not None:
            self.on_job_status()
        condition = k8s.V1JobCondition(type=self.job_condition, status="True", reason="BackoffLimitExceeded")
        return k8s.V1Job(
            metadata=k8s.V1ObjectMeta(name=name, namespace=namespace), status=k8s.V1JobStatus(conditions=[condition])
        )

    def delete_namespaced_job(self, *, name: str, namespace: str, **options: Any) -> None:
        self.calls.append(("delete_namespaced_job", name))
        self.deleted_jobs.append({"name": name, "namespace": namespace, **options})

    # The pods' exec streams (XCom sidecar)

    def read_xcom(self, pod: k8s.V1Pod) -> str:
        return self.xcoms.get(int(pod.metadata.annotations[COMPLETION_INDEX_KEY]), EMPTY_XCOM_RESULT)

    def kill_sidecar(self, pod: k8s.V1Pod) -> None:
        self.calls.append(("kill_sidecar", pod.metadata.name))
        index = int(pod.metadata.annotations[COMPLETION_INDEX_KEY])
        self.pods[pod.metadata.name].status = self._status(index, sidecar_running=False)

    def _status(self, index: int, *, sidecar_running: bool) -> k8s.V1PodStatus:
        exit_code = self.exit_codes.get(index, 0)
        done = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code))
        sidecar = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning()) if sidecar_running else done
        phase = "Running" if sidecar_running else ("Succeeded" if exit_code == 0 else "Failed")
        return k8s.V1PodStatus(
            phase=phase,
            container_statuses=[
                k8s.V1ContainerStatus(name="base", state=done, ready=False, restart_count=0, image=IMAGE, image_id=""),
                k8s.V1ContainerStatus(
                    name="airflow-xcom-sidecar", state=sidecar, ready=True, restart_count=0, image="alpine", image_id=""
                ),
            ],
        )


def _selects(selector: str, labels: dict[str, str]) -> bool:
    """A label selector of the forms the provider writes: `k=v`, `k!=v`, `!k`."""
    for term in selector.split(","):
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        else:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
    return True


@pytest.fixture
def kubernetes_execution(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFPIPE_K8S", json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": KUBE_CONFIG}})
    )
    return {
        "mode": "kubernetes",
        "local": {"python": "python3"},
        "kubernetes": {"image": IMAGE, "namespace": "ml-pipelines", "kubernetes_conn_id": "tfpipe_k8s"},
    }


@pytest.fixture
def context() -> dict[str, Any]:
    ti = mock.MagicMock(dag_id=DAG_ID, task_id="train", map_index=-1, try_number=2)
    return {"ti": ti, "run_id": RUN_ID, "dag": SimpleNamespace()}


def run_on(cluster: FakeCluster, operator: RunMLStageOperator, context: dict[str, Any]) -> Any:
    with (
        mock.patch.object(KubernetesHook, "core_v1_client", cluster),
        mock.patch.object(KubernetesHook, "batch_v1_client", cluster),
        mock.patch.object(
            PodManager, "extract_xcom_json", autospec=True, side_effect=lambda _, pod: cluster.read_xcom(pod)
        ),
        mock.patch.object(
            PodManager, "extract_xcom_kill", autospec=True, side_effect=lambda _, pod: cluster.kill_sidecar(pod)
        ),
        mock.patch.object(PodManager, "fetch_requested_container_logs", autospec=True) as fetch_logs,
    ):
        try:
            return operator.execute(context)
        finally:
            cluster.logs_of += [call.kwargs["pod"].metadata.name for call in fetch_logs.call_args_list]


JOB_NAME = training_job_name(dag_id=DAG_ID, task_id="train", run_id=RUN_ID, map_index=-1, try_number=2)


@pytest.mark.parametrize("workers", [2, 3])
def test_kubernetes_mode_runs_the_workers_as_a_job_and_returns_the_chiefs_result(
    kubernetes_execution: dict[str, Any], context: dict[str, Any], workers: int
) -> None:
    cluster = FakeCluster(workers, xcoms={0: json.dumps(MODEL)})
    operator = train_operator(kubernetes_execution, workers=workers)

    assert run_on(cluster, operator, context) == MODEL

    pod_names = [f"{JOB_NAME}-{index}-x{index}z" for index in range(workers)]
    verbs = [verb for verb, _ in cluster.calls]
    assert cluster.calls[0] == ("create_namespaced_service", JOB_NAME)
    assert cluster.calls[1] == ("create_namespaced_job", JOB_NAME)
    assert cluster.calls[-1] == ("delete_namespaced_service", JOB_NAME)
    assert cluster.services == {}
    assert sorted(name for verb, name in cluster.calls if verb == "kill_sidecar") == pod_names
    assert sorted(name for verb, name in cluster.calls if verb == "delete_namespaced_pod") == pod_names
    assert "delete_namespaced_job" not in verbs  # a finished Job is left to its TTL
    assert sorted(cluster.logs_of) == pod_names

    job = cluster.jobs[JOB_NAME]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == workers
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["subdomain"] == JOB_NAME
    base = pod_spec["containers"][0]
    # Each pod is one worker: no --workers, the stage reads its role from the environment.
    assert base["args"] == [
        "train",
        "--examples-uri",
        "gs://acme-ml/examples",
        "--epochs",
        "3",
        "--result-file",
        "/airflow/xcom/return.json",
    ]
    env = {item["name"]: item["value"] for item in base["env"]}
    assert env["TFPIPE_WORKER_HOSTS"].split(",") == [
        f"{JOB_NAME}-{index}.{JOB_NAME}.ml-pipelines.svc:2222" for index in range(workers)
    ]


def test_kubernetes_mode_service_selects_exactly_the_job_pods(
    kubernetes_execution: dict[str, Any], context: dict[str, Any]
) -> None:
    cluster = FakeCluster(2, xcoms={0: json.dumps(MODEL)})
    services: list[dict[str, Any]] = []
    create_service = cluster.create_namespaced_service

    def create_and_remember(*, namespace: str, body: k8s.V1Service) -> k8s.V1Service:
        created = create_service(namespace=namespace, body=body)
        services.append(cluster.services[body.metadata.name])
        return created

    cluster.create_namespaced_service = create_and_remember  # type: ignore[method-assign]
    run_on(cluster, train_operator(kubernetes_execution, workers=2), context)
    # The next try of the same task: another Job, whose pods are not this Service's workers.
    context["ti"].try_number = 3
    run_on(cluster, train_operator(kubernetes_execution, workers=2), context)

    first, second = services
    assert first["metadata"] == {
        "name": JOB_NAME,
        "namespace": "ml-pipelines",
        "labels": {
            "dag_id": DAG_ID,
            "task_id": "train",
            "app.kubernetes.io/part-of": "tfpipe",
            "tfpipe/stage": "train",
        },
    }
    assert first["spec"]["clusterIP"] == "None"
    assert first["spec"]["ports"] == [{"name": "tf-worker", "port": 2222, "targetPort": 2222}]
    assert second["metadata"]["name"] != JOB_NAME
    assert len(cluster.pods) == 4
    for service in (first, second):
        selector = ",".join(f"{key}={value}" for key, value in service["spec"]["selector"].items())
        selected = [name for name, pod in cluster.pods.items() if _selects(selector, pod.metadata.labels)]
        name = service["metadata"]["name"]
        assert sorted(selected) == [f"{name}-0-x0z", f"{name}-1-x1z"]


def test_kubernetes_mode_reuses_the_service_of_an_earlier_attempt(
    kubernetes_execution: dict[str, Any], context: dict[str, Any]
) -> None:
    cluster = FakeCluster(2, xcoms={0: json.dumps(MODEL)})
    cluster.services[JOB_NAME] = {"left": "by an earlier attempt"}

    assert run_on(cluster, train_operator(kubernetes_execution, workers=2), context) == MODEL
    assert cluster.calls[0] == ("create_namespaced_service", JOB_NAME)
    assert cluster.calls[1] == ("create_namespaced_job", JOB_NAME)
    assert cluster.services == {}


def test_kubernetes_mode_failed_job_fails_the_task_and_removes_the_service(
    kubernetes_execution: dict[str, Any], context: dict[str, Any]
) -> None:
    cluster = FakeCluster(2, xcoms={}, exit_codes={1: 137})
    cluster.job_condition = "Failed"

    with pytest.raises(AirflowException, match=f"job '{JOB_NAME}' is failed with error 'BackoffLimitExceeded'"):
        run_on(cluster, train_operator(kubernetes_execution, workers=2), context)
    assert cluster.calls[-1] == ("delete_namespaced_service", JOB_NAME)
    assert cluster.services == {}


def test_kubernetes_mode_chief_without_result_fails(
    kubernetes_execution: dict[str, Any], context: dict[str, Any]
) -> None:
    # A worker's output is never taken for the chief's.
    cluster = FakeCluster(2, xcoms={1: json.dumps(MODEL)})

    with pytest.raises(AirflowException, match=f"chief pod {JOB_NAME}-0-x0z finished without writing"):
        run_on(cluster, train_operator(kubernetes_execution, workers=2), context)
    assert cluster.services == {}


def test_kubernetes_mode_on_kill_deletes_the_job(kubernetes_execution: dict[str, Any], context: dict[str, Any]) -> None:
    cluster = FakeCluster(2, xcoms={0: json.dumps(MODEL)})
    operator = train_operator(kubernetes_execution, workers=2)

    def killed_while_waiting() -> None:
        cluster.on_job_status = None
        operator.on_kill()
        cluster.job_condition = "Failed"

    cluster.on_job_status = killed_while_waiting
    with pytest.raises(AirflowException, match="is failed"):
        run_on(cluster, operator, context)

    assert cluster.deleted_jobs == [{"name": JOB_NAME, "namespace": "ml-pipelines", "propagation_policy": "Foreground"}]
    assert sorted(name for verb, name in cluster.calls if verb == "delete_namespaced_pod") == [
        f"{JOB_NAME}-0-x0z",
        f"{JOB_NAME}-1-x1z",
    ]
    assert cluster.calls[-1] == ("delete_namespaced_service", JOB_NAME)


# Vertex AI: a chief pool and a worker pool; Vertex AI's TF_CONFIG tells each replica its role.


def test_vertex_ai_mode_submits_a_chief_and_a_worker_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: GoogleBaseHook) -> None:
        raise AssertionError("a test tried to fetch Google credentials")

    monkeypatch.setattr(GoogleBaseHook, "get_credentials_and_project_id", refuse)
    monkeypatch.setenv("AIRFLOW_CONN_TFPIPE_GCP", json.dumps({"conn_type": "google_cloud_platform"}))
    result_uri = "gs://acme-ml/chicago_taxi/span=2016-03/run=r1/train/result.json"
    operator = train_operator(
        {
            "mode": "vertex_ai",
            "local": {"python": "python3"},
            "vertex_ai": {
                "project_id": "acme-ml",
                "region": "europe-west4",
                "image_uri": IMAGE,
                "gcp_conn_id": "tfpipe_gcp",
                "poll_interval_seconds": 1,
            },
        },
        workers=3,
        result_uri=result_uri,
    )
    client = FakeJobServiceClient([JobState.JOB_STATE_SUCCEEDED])

    with (
        mock.patch.object(CustomJobHook, "get_job_service_client", autospec=True, return_value=client),
        mock.patch.object(GCSHook, "download", autospec=True, return_value=json.dumps(MODEL).encode()) as download,
    ):
        assert operator.execute({"ti": mock.MagicMock()}) == MODEL

    assert download.call_args.kwargs["object_name"] == "chicago_taxi/span=2016-03/run=r1/train/result.json"
    assert client.created is not None
    pools = client.created.custom_job.job_spec.worker_pool_specs
    assert [pool.replica_count for pool in pools] == [1, 2]
    for pool in pools:
        assert list(pool.container_spec.args) == [
            "train",
            "--examples-uri",
            "gs://acme-ml/examples",
            "--epochs",
            "3",
            "--result-file",
            result_uri,
        ]
