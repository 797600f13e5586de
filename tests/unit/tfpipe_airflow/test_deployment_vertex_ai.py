"""The Vertex AI endpoint target at the client boundary: providers-google's real hooks, fake API clients.

The hooks' client getters return stand-ins for EndpointServiceClient and ModelServiceClient that turn
every call into the real request message (unknown or mistyped fields would raise), record it, and keep an
endpoint's state as Vertex AI would, so the requests our code builds are what is checked. No network and
no credentials: fetching them fails the test.
"""

from __future__ import annotations

import itertools
import json
from typing import Any
from unittest import mock

import pytest
from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import EndpointServiceHook
from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook
from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
from google.cloud.aiplatform_v1 import EndpointServiceClient, ModelServiceClient
from google.cloud.aiplatform_v1.types import (
    DeployedModel,
    DeployModelRequest,
    DeployModelResponse,
    Endpoint,
    GetEndpointRequest,
    ListModelsRequest,
    Model,
    UndeployModelRequest,
    UndeployModelResponse,
    UpdateEndpointRequest,
    UploadModelRequest,
    UploadModelResponse,
)

from tests.conftest import PROJECT_ROOT
from tfpipe.config import ServingConfig, VertexAIServingConfig
from tfpipe_airflow.deployment import build_target
from tfpipe_airflow.deployment.vertex_ai import VertexAIEndpointTarget

PROJECT, REGION, ENDPOINT_ID = "acme-ml", "europe-west4", "4455667788"
ENDPOINT = f"projects/{PROJECT}/locations/{REGION}/endpoints/{ENDPOINT_ID}"
IMAGE = "europe-docker.pkg.dev/acme-ml/tfpipe/tfpipe-ml:1.4.2"
V2_URI = "gs://acme-ml/mlflow/artifacts/1/abc/artifacts/model"


class Operation:
    """A long-running operation that is already done."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def result(self, timeout: Any = None, polling: Any = None, retry: Any = None) -> Any:
        return self.response


class FakeEndpointClient:
    endpoint_path = staticmethod(EndpointServiceClient.endpoint_path)

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.requests: list[Any] = []
        self._ids = itertools.count(9000)

    def _copy(self) -> Endpoint:
        return Endpoint.deserialize(Endpoint.serialize(self.endpoint))

    def get_endpoint(self, request: dict[str, Any], **_: Any) -> Endpoint:
        assert GetEndpointRequest(request).name == ENDPOINT
        return self._copy()

    def deploy_model(self, request: dict[str, Any], **_: Any) -> Operation:
        message = DeployModelRequest(request)
        self.requests.append(message)
        assert message.endpoint == ENDPOINT
        deployed = DeployedModel.deserialize(DeployedModel.serialize(message.deployed_model))
        deployed.id = str(next(self._ids))
        self.endpoint.deployed_models.append(deployed)
        split = dict(message.traffic_split)
        if split:
            assert sum(split.values()) == 100, "a traffic split must add up to 100"
            self.endpoint.traffic_split = {(deployed.id if key == "0" else key): v for key, v in split.items()}
        return Operation(DeployModelResponse(deployed_model=deployed))

    def update_endpoint(self, request: dict[str, Any], **_: Any) -> Endpoint:
        message = UpdateEndpointRequest(request)
        self.requests.append(message)
        assert message.endpoint.name == ENDPOINT
        paths = set(message.update_mask.paths)
        if "traffic_split" in paths:
            split = dict(message.endpoint.traffic_split)
            assert sum(split.values()) == 100
            known = {d.id for d in self.endpoint.deployed_models}
            assert set(split) <= known, f"unknown deployed models {set(split) - known}"
            self.endpoint.traffic_split = split
        if "labels" in paths:
            self.endpoint.labels = dict(message.endpoint.labels)
        return self._copy()

    def undeploy_model(self, request: dict[str, Any], **_: Any) -> Operation:
        message = UndeployModelRequest(request)
        self.requests.append(message)
        assert dict(self.endpoint.traffic_split).get(message.deployed_model_id, 0) == 0, "undeploying a serving model"
        kept = [d for d in self.endpoint.deployed_models if d.id != message.deployed_model_id]
        assert len(kept) == len(self.endpoint.deployed_models) - 1
        self.endpoint.deployed_models = kept
        split = {k: v for k, v in dict(self.endpoint.traffic_split).items() if k != message.deployed_model_id}
        self.endpoint.traffic_split = split
        return Operation(UndeployModelResponse())


class FakeModelClient:
    common_location_path = staticmethod(ModelServiceClient.common_location_path)
    model_path = staticmethod(ModelServiceClient.model_path)

    def __init__(self, models: list[Model] | None = None) -> None:
        self.models = list(models or [])
        self.requests: list[Any] = []

    def list_models(self, request: dict[str, Any], **_: Any) -> list[Model]:
        message = ListModelsRequest(request)
        self.requests.append(message)
        wanted = dict(part.split("=") for part in message.filter.replace("labels.", "").split(" AND "))
        wanted = {key: value.strip('"') for key, value in wanted.items()}
        return [m for m in self.models if all(m.labels.get(k) == v for k, v in wanted.items())]

    def upload_model(self, request: dict[str, Any], **_: Any) -> Operation:
        message = UploadModelRequest(request)
        self.requests.append(message)
        name = f"projects/{PROJECT}/locations/{REGION}/models/{700 + len(self.models)}"
        self.models.append(Model(name=name, artifact_uri=message.model.artifact_uri, labels=message.model.labels))
        return Operation(UploadModelResponse(model=name))


@pytest.fixture(autouse=True)
def no_google_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: GoogleBaseHook) -> None:
        raise AssertionError("a test tried to fetch Google credentials")

    monkeypatch.setattr(GoogleBaseHook, "get_credentials_and_project_id", refuse)
    monkeypatch.setenv("AIRFLOW_CONN_TFPIPE_GCP", json.dumps({"conn_type": "google_cloud_platform"}))


@pytest.fixture
def config() -> VertexAIServingConfig:
    return VertexAIServingConfig(
        project_id=PROJECT,
        region=REGION,
        endpoint_id=ENDPOINT_ID,
        machine_type="n1-standard-4",
        min_replica_count=2,
        max_replica_count=5,
        serving_image_uri=IMAGE,
        gcp_conn_id="tfpipe_gcp",
    )


def serving_endpoint() -> Endpoint:
    """An endpoint on which version 1 serves all traffic."""
    return Endpoint(
        name=ENDPOINT,
        deployed_models=[
            DeployedModel(
                id="111", display_name="big_tipper-v1", model=f"projects/{PROJECT}/locations/{REGION}/models/1"
            )
        ],
        traffic_split={"111": 100},
        labels={"tfpipe-stable": "1", "team": "ml"},
    )


@pytest.fixture
def clients():
    endpoints, models = FakeEndpointClient(serving_endpoint()), FakeModelClient()
    with (
        mock.patch.object(EndpointServiceHook, "get_endpoint_service_client", autospec=True, return_value=endpoints),
        mock.patch.object(ModelServiceHook, "get_model_service_client", autospec=True, return_value=models),
    ):
        yield endpoints, models


@pytest.fixture
def target(config, clients) -> VertexAIEndpointTarget:
    serving = ServingConfig.model_validate(
        {
            "target": "vertex_ai",
            "model_name": "big_tipper",
            "local": {"request_log": {"dir": "/tmp/unused"}},
            "vertex_ai": config.model_dump(),
        }
    )
    built = build_target(serving)
    assert isinstance(built, VertexAIEndpointTarget)
    return built


def test_the_current_deployment_is_read_from_the_endpoint(target):
    current = target.deployment()
    assert (current.stable, current.canary, current.canary_percent, current.loaded) == ("1", None, 0.0, ("1",))
    assert target.metrics_url() is None, "no Prometheus metrics on Vertex AI endpoints"
    assert target.url() == (
        f"https://console.cloud.google.com/vertex-ai/locations/{REGION}/endpoints/{ENDPOINT_ID}?project={PROJECT}"
    )


def test_loading_a_version_uploads_it_once_and_deploys_it_with_no_traffic(target, clients):
    endpoints, models = clients
    target.load("2", V2_URI)

    [listing, upload] = models.requests
    assert listing.parent == f"projects/{PROJECT}/locations/{REGION}"
    assert listing.filter == 'labels.tfpipe-model="big_tipper" AND labels.tfpipe-version="2"'
    assert upload.parent == f"projects/{PROJECT}/locations/{REGION}"
    model = upload.model
    assert model.display_name == "big_tipper-v2" and model.artifact_uri == V2_URI
    assert dict(model.labels) == {"tfpipe-model": "big_tipper", "tfpipe-version": "2"}
    container = model.container_spec
    assert container.image_uri == IMAGE
    assert list(container.command) == ["python", "-m", "tfpipe", "serve"]
    assert "$(AIP_STORAGE_URI)" in container.args and "$(AIP_HTTP_PORT)" in container.args
    # The server reads the pipeline config the ML image carries (docker/ml.Dockerfile copies dags/configs).
    config_arg = container.args[container.args.index("--config") + 1]
    assert config_arg == "/opt/tfpipe/dags/configs/chicago_taxi.yaml"
    assert "COPY dags/configs /opt/tfpipe/dags/configs" in (PROJECT_ROOT / "docker" / "ml.Dockerfile").read_text()
    assert container.predict_route == "/v1/models/big_tipper:predict" and container.health_route == "/readyz"
    assert [port.container_port for port in container.ports] == [8080]

    [deploy] = endpoints.requests
    assert isinstance(deploy, DeployModelRequest)
    assert deploy.endpoint == ENDPOINT
    deployed = deploy.deployed_model
    assert deployed.model == f"projects/{PROJECT}/locations/{REGION}/models/700"
    assert deployed.display_name == "big_tipper-v2"
    resources = deployed.dedicated_resources
    assert resources.machine_spec.machine_type == "n1-standard-4"
    assert (resources.min_replica_count, resources.max_replica_count) == (2, 5)
    assert dict(deploy.traffic_split) == {"111": 100, "0": 0}, "the new model gets no traffic yet"

    after = target.deployment()
    assert (after.stable, after.canary, set(after.loaded)) == ("1", None, {"1", "2"})

    # Again (a retried task): nothing uploaded or deployed twice.
    target.load("2", V2_URI)
    assert len(models.requests) == 2 and len(endpoints.requests) == 1


def test_a_model_uploaded_by_an_earlier_attempt_is_reused(target, clients):
    endpoints, models = clients
    models.models.append(
        Model(
            name=f"projects/{PROJECT}/locations/{REGION}/models/555",
            artifact_uri=V2_URI + "/",
            labels={"tfpipe-model": "big_tipper", "tfpipe-version": "2"},
        )
    )
    target.load("2", V2_URI)
    assert not [r for r in models.requests if isinstance(r, UploadModelRequest)]
    assert endpoints.requests[0].deployed_model.model.endswith("/models/555")


def test_the_first_model_on_an_empty_endpoint_takes_all_traffic(target, clients):
    endpoints, _ = clients
    endpoints.endpoint = Endpoint(name=ENDPOINT)
    assert target.deployment().stable is None
    target.load("1", V2_URI)
    assert dict(endpoints.requests[0].traffic_split) == {"0": 100}
    deployment = target.set_traffic("1", None, 0)
    assert (deployment.stable, deployment.canary) == ("1", None)


def test_each_traffic_step_is_one_update_of_traffic_split_and_role_labels(target, clients):
    endpoints, _ = clients
    target.load("2", V2_URI)
    canary_id = target.deployment().raw["deployed_model_ids"]["2"]

    deployment = target.set_traffic("1", "2", 25)

    update = endpoints.requests[-1]
    assert isinstance(update, UpdateEndpointRequest)
    assert update.endpoint.name == ENDPOINT
    assert dict(update.endpoint.traffic_split) == {"111": 75, canary_id: 25}
    assert dict(update.endpoint.labels) == {"team": "ml", "tfpipe-stable": "1", "tfpipe-canary": "2"}
    assert list(update.update_mask.paths) == ["traffic_split", "labels"]
    assert (deployment.stable, deployment.canary, deployment.canary_percent) == ("1", "2", 25.0)


def test_a_rollback_is_one_update_that_sends_everything_to_stable(target, clients):
    endpoints, _ = clients
    target.load("2", V2_URI)
    target.set_traffic("1", "2", 50)
    before = len(endpoints.requests)

    result = target.rollback("drift above the limit")

    [update] = endpoints.requests[before:]
    assert isinstance(update, UpdateEndpointRequest)
    assert dict(update.endpoint.traffic_split) == {"111": 100}
    assert dict(update.endpoint.labels) == {"team": "ml", "tfpipe-stable": "1"}
    assert (result.deployment.stable, result.deployment.canary, result.deployment.canary_percent) == ("1", None, 0)
    assert "2" in result.deployment.loaded, "the canary stays deployed, with no traffic"
    assert result.seconds is None and result.round_trip_seconds >= 0


def test_promotion_gives_the_canary_everything_and_undeploying_frees_the_old_version(target, clients):
    endpoints, _ = clients
    target.load("2", V2_URI)
    canary_id = target.deployment().raw["deployed_model_ids"]["2"]
    target.set_traffic("1", "2", 100)

    promoted = target.promote()
    assert dict(endpoints.requests[-1].endpoint.traffic_split) == {canary_id: 100}
    assert dict(endpoints.requests[-1].endpoint.labels) == {"team": "ml", "tfpipe-stable": "2"}
    assert (promoted.stable, promoted.canary) == ("2", None)

    assert target.retire({"2", "1"}) == [], "the previous stable is kept for an instant rollback"
    assert target.retire({"2"}) == ["1"]
    [undeploy] = [r for r in endpoints.requests if isinstance(r, UndeployModelRequest)]
    assert undeploy.endpoint == ENDPOINT and undeploy.deployed_model_id == "111"
    assert target.deployment().loaded == ("2",)


def test_rolling_back_to_a_named_version_needs_it_deployed(target):
    with pytest.raises(ValueError, match=r"version\(s\) 7 of big_tipper are not deployed"):
        target.rollback("bad", stable="7")


def test_an_endpoint_set_up_by_hand_has_its_busiest_model_as_stable(target, clients):
    endpoints, _ = clients
    endpoints.endpoint = Endpoint(
        name=ENDPOINT,
        deployed_models=[
            DeployedModel(id="1", display_name="big_tipper-v4"),
            DeployedModel(id="2", display_name="big_tipper-v5"),
            DeployedModel(id="3", display_name="something-else"),
        ],
        traffic_split={"1": 10, "2": 90},
    )
    current = target.deployment()
    assert (current.stable, current.canary, current.loaded) == ("5", None, ("4", "5"))
