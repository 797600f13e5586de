"""A Vertex AI endpoint as a deployment target, through providers-google's Vertex AI hooks.

- A registry version is uploaded once as a Vertex AI Model (labels `tfpipe-model`, `tfpipe-version`; a
  retry finds it instead of uploading twice) whose container is our ML image running the same model
  server, and deployed to the endpoint as a DeployedModel named `<model>-v<version>`, with no traffic.
- Every traffic change is one UpdateEndpoint of `traffic_split` together with the endpoint labels
  `tfpipe-stable` / `tfpipe-canary` that say which deployed model plays which role, so the roles and the
  split can never disagree. A rollback is one such call: the canary gets 0%, stable 100%.
- Promotion keeps the old stable deployed with no traffic (rollback stays instant); `unload` undeploys.

Vertex AI endpoints do not expose the model server's Prometheus metrics, so `metrics_url` is None: the
canary analysis needs a metrics source there (see CanaryRolloutOperator).
"""

from __future__ import annotations

import time

from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import EndpointServiceHook
from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook
from google.cloud.aiplatform_v1.types import (
    DedicatedResources,
    DeployedModel,
    Endpoint,
    EnvVar,
    MachineSpec,
    Model,
    ModelContainerSpec,
    Port,
)

from tfpipe.config import VertexAIServingConfig
from tfpipe_airflow.deployment import Deployment, DeploymentTarget, RollbackResult

STABLE_LABEL = "tfpipe-stable"
CANARY_LABEL = "tfpipe-canary"
MODEL_LABEL = "tfpipe-model"
VERSION_LABEL = "tfpipe-version"
SERVING_PORT = 8080
# Uploading a model and deploying it (machines start) take minutes.
OPERATION_TIMEOUT_SECONDS = 3600


def deployed_model_name(model_name: str, version: str) -> str:
    return f"{model_name}-v{version}"


def _label_value(value: str) -> str:
    # Label values: lowercase letters, digits, - and _, at most 63 characters.
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(value).lower())[:63]


def serving_model(config: VertexAIServingConfig, model_name: str, version: str, model_uri: str) -> Model:
    """The Vertex AI Model of one registry version: its SavedModel, served by our ML image."""
    return Model(
        display_name=deployed_model_name(model_name, version),
        description=f"{model_name} version {version} (tfpipe)",
        artifact_uri=model_uri,
        labels={MODEL_LABEL: _label_value(model_name), VERSION_LABEL: _label_value(version)},
        container_spec=ModelContainerSpec(
            image_uri=config.serving_image_uri,
            command=["python", "-m", "tfpipe", "serve"],
            # Vertex AI copies artifact_uri to AIP_STORAGE_URI and expands $(VAR) in args.
            args=[
                "--config",
                config.image_config,
                "--model-uri",
                "$(AIP_STORAGE_URI)",
                "--version",
                str(version),
                "--host",
                "0.0.0.0",
                "--port",
                "$(AIP_HTTP_PORT)",
            ],
            env=[
                EnvVar(name="TF_USE_LEGACY_KERAS", value="1"),
                EnvVar(name="TFPIPE_MODEL_NAME", value=model_name),
                # Vertex AI logs requests itself (request-response logging); ours stays in the container.
                EnvVar(name="TFPIPE_REQUEST_LOG_DIR", value="/tmp/tfpipe-requests"),
            ],
            ports=[Port(container_port=SERVING_PORT)],
            predict_route=f"/v1/models/{model_name}:predict",
            health_route="/readyz",
        ),
    )


class VertexAIEndpointTarget(DeploymentTarget):
    kind = "vertex_ai"

    def __init__(self, config: VertexAIServingConfig, model_name: str) -> None:
        self.config = config
        self.model_name = model_name
        self.endpoints = EndpointServiceHook(gcp_conn_id=config.gcp_conn_id)
        self.models = ModelServiceHook(gcp_conn_id=config.gcp_conn_id)

    @property
    def _where(self) -> dict[str, str]:
        return {"project_id": self.config.project_id, "region": self.config.region}

    # -- reading the endpoint ----------------------------------------------------------------------

    def _endpoint(self) -> Endpoint:
        return self.endpoints.get_endpoint(**self._where, endpoint=self.config.endpoint_id)

    def _deployed_ids(self, endpoint: Endpoint) -> dict[str, str]:
        """version -> DeployedModel id, for the deployed models this pipeline made."""
        prefix = f"{self.model_name}-v"
        return {
            deployed.display_name.removeprefix(prefix): deployed.id
            for deployed in endpoint.deployed_models
            if deployed.display_name.startswith(prefix)
        }

    def _deployment(self, endpoint: Endpoint) -> Deployment:
        ids = self._deployed_ids(endpoint)
        split = {key: int(value) for key, value in dict(endpoint.traffic_split).items()}
        labels = dict(endpoint.labels)
        stable = labels.get(STABLE_LABEL) if labels.get(STABLE_LABEL) in ids else None
        canary = labels.get(CANARY_LABEL) if labels.get(CANARY_LABEL) in ids else None
        if stable is None and ids:
            # Roles not recorded (an endpoint set up by hand): stable is the version with most traffic.
            busiest = max(ids, key=lambda version: split.get(ids[version], 0))
            if split.get(ids[busiest], 0) > 0:
                stable = busiest
        return Deployment(
            stable=stable,
            canary=canary if canary != stable else None,
            canary_percent=float(split.get(ids[canary], 0)) if canary and canary != stable else 0.0,
            loaded=tuple(sorted(ids, key=lambda v: (len(v), v))),
            raw={"endpoint": endpoint.name, "traffic_split": split, "labels": labels, "deployed_model_ids": ids},
        )

    def deployment(self) -> Deployment:
        return self._deployment(self._endpoint())

    # -- changing it -------------------------------------------------------------------------------

    def _uploaded_model(self, version: str, model_uri: str) -> str:
        """The Vertex AI Model of `version`: found by its labels, or uploaded now."""
        wanted = (
            f'labels.{MODEL_LABEL}="{_label_value(self.model_name)}" '
            f'AND labels.{VERSION_LABEL}="{_label_value(version)}"'
        )
        for found in self.models.list_models(**self._where, filter=wanted):
            if found.artifact_uri.rstrip("/") == model_uri.rstrip("/"):
                return found.name
        operation = self.models.upload_model(
            **self._where, model=serving_model(self.config, self.model_name, version, model_uri)
        )
        return self.models.wait_for_operation_result(operation, timeout=OPERATION_TIMEOUT_SECONDS).model

    def load(self, version: str, model_uri: str) -> None:
        endpoint = self._endpoint()
        if str(version) in self._deployed_ids(endpoint):
            return
        model = self._uploaded_model(str(version), model_uri)
        current = {key: int(value) for key, value in dict(endpoint.traffic_split).items()}
        # "0" is the model being deployed: no traffic, unless nothing else serves (a split must sum to 100).
        traffic_split = {**current, "0": 0} if sum(current.values()) == 100 else {"0": 100}
        operation = self.endpoints.deploy_model(
            **self._where,
            endpoint=self.config.endpoint_id,
            deployed_model=DeployedModel(
                model=model,
                display_name=deployed_model_name(self.model_name, str(version)),
                dedicated_resources=DedicatedResources(
                    machine_spec=MachineSpec(machine_type=self.config.machine_type),
                    min_replica_count=self.config.min_replica_count,
                    max_replica_count=self.config.max_replica_count,
                ),
            ),
            traffic_split=traffic_split,
        )
        self.endpoints.wait_for_operation_result(operation, timeout=OPERATION_TIMEOUT_SECONDS)

    def _update(self, endpoint: Endpoint, split: dict[str, int], stable: str, canary: str | None) -> Endpoint:
        labels = {k: v for k, v in dict(endpoint.labels).items() if k not in (STABLE_LABEL, CANARY_LABEL)}
        labels[STABLE_LABEL] = _label_value(stable)
        if canary is not None:
            labels[CANARY_LABEL] = _label_value(canary)
        return self.endpoints.update_endpoint(
            **self._where,
            endpoint_id=self.config.endpoint_id,
            endpoint={"traffic_split": split, "labels": labels},
            update_mask={"paths": ["traffic_split", "labels"]},
        )

    def _ids(self, endpoint: Endpoint, *versions: str | None) -> dict[str, str]:
        ids = self._deployed_ids(endpoint)
        missing = [v for v in versions if v is not None and str(v) not in ids]
        if missing:
            raise ValueError(
                f"version(s) {', '.join(missing)} of {self.model_name} are not deployed to endpoint "
                f"{self.config.endpoint_id} (deployed: {', '.join(ids) or 'none'})"
            )
        return ids

    def set_traffic(self, stable: str, canary: str | None, canary_percent: float) -> Deployment:
        endpoint = self._endpoint()
        ids = self._ids(endpoint, stable, canary)
        percent = round(canary_percent) if canary is not None else 0
        split = {ids[str(stable)]: 100 - percent}
        if canary is not None:
            split[ids[str(canary)]] = percent
        return self._deployment(self._update(endpoint, split, str(stable), None if canary is None else str(canary)))

    def rollback(self, reason: str, stable: str | None = None) -> RollbackResult:
        started = time.perf_counter()
        endpoint = self._endpoint()
        target = str(stable) if stable is not None else self._deployment(endpoint).stable
        if target is None:
            raise ValueError(f"endpoint {self.config.endpoint_id} has no stable version to roll back to")
        ids = self._ids(endpoint, target)
        updated = self._update(endpoint, {ids[target]: 100}, target, None)
        return RollbackResult(self._deployment(updated), None, time.perf_counter() - started)

    def promote(self) -> Deployment:
        endpoint = self._endpoint()
        current = self._deployment(endpoint)
        if current.canary is None:
            return current
        ids = self._ids(endpoint, current.canary)
        return self._deployment(self._update(endpoint, {ids[current.canary]: 100}, current.canary, None))

    def unload(self, version: str) -> None:
        endpoint = self._endpoint()
        ids = self._ids(endpoint, version)
        operation = self.endpoints.undeploy_model(
            **self._where, endpoint=self.config.endpoint_id, deployed_model_id=ids[str(version)]
        )
        self.endpoints.wait_for_operation_result(operation, timeout=OPERATION_TIMEOUT_SECONDS)

    def url(self) -> str:
        return (
            f"https://console.cloud.google.com/vertex-ai/locations/{self.config.region}/endpoints/"
            f"{self.config.endpoint_id}?project={self.config.project_id}"
        )
