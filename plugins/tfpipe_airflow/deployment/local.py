"""Our model server as a deployment target, through ModelServerHook (real HTTP, the embedded default)."""

from __future__ import annotations

from typing import Any

from tfpipe.config import LocalServingConfig
from tfpipe_airflow.deployment import Deployment, DeploymentTarget, RollbackResult
from tfpipe_airflow.hooks.model_server import ModelServerHook


def deployment_from_server(state: dict[str, Any]) -> Deployment:
    """The server's `GET /admin/deployment` answer as a Deployment."""
    stable = state.get("stable") or None
    canary = state.get("canary") or None
    loaded = state.get("loaded") or []
    uris = {str(item["version"]): item.get("model_uri") for item in loaded if isinstance(item, dict)}
    for role in (stable, canary):
        if role:
            uris.setdefault(str(role["version"]), role.get("model_uri"))
    return Deployment(
        stable=str(stable["version"]) if stable else None,
        canary=str(canary["version"]) if canary else None,
        canary_percent=float(state.get("canary_percent") or 0.0) if canary else 0.0,
        loaded=tuple(str(item["version"]) for item in loaded if isinstance(item, dict)),
        model_uris={version: uri for version, uri in uris.items() if uri},
        raw=dict(state),
    )


class LocalModelServerTarget(DeploymentTarget):
    kind = "local"

    def __init__(self, config: LocalServingConfig, model_name: str, *, actor: str | None = None) -> None:
        self.config = config
        self.model_name = model_name
        self.hook = ModelServerHook(config.conn_id, fallback=config, actor=actor)

    def deployment(self) -> Deployment:
        return deployment_from_server(self.hook.get_deployment())

    def load(self, version: str, model_uri: str) -> None:
        self.hook.load_version(version, model_uri)

    def set_traffic(self, stable: str, canary: str | None, canary_percent: float) -> Deployment:
        answer = self.hook.set_traffic(stable, canary, canary_percent)
        return deployment_from_server(answer) if "stable" in answer else self.deployment()

    def rollback(self, reason: str, stable: str | None = None) -> RollbackResult:
        answer = self.hook.rollback(reason, stable)
        state = answer.get("deployment") if isinstance(answer.get("deployment"), dict) else answer
        deployment = deployment_from_server(state) if "stable" in state else self.deployment()
        seconds = answer.get("seconds")
        return RollbackResult(
            deployment, float(seconds) if seconds is not None else None, float(answer["round_trip_seconds"])
        )

    def promote(self) -> Deployment:
        answer = self.hook.promote()
        state = answer.get("deployment") if isinstance(answer.get("deployment"), dict) else answer
        return deployment_from_server(state) if "stable" in state else self.deployment()

    def unload(self, version: str) -> None:
        self.hook.unload_version(version)

    def metrics_url(self) -> str:
        return self.hook.metrics_url()

    def url(self) -> str:
        return f"{self.hook.base_url}/v1/models/{self.model_name}"

    def close(self) -> None:
        self.hook.close()
