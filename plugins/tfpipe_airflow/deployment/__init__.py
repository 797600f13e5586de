"""Where models serve, behind one interface: our model server (embedded default) or a Vertex AI endpoint.

A target keeps two versions in service during a rollout, the stable one and the canary, and moves the
traffic between them. The stable version stays loaded (warm) throughout, so a rollback is one call that
takes effect at once, and the version that served before the last promotion stays loaded too, so the
rollback DAG can go back to it at once.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tfpipe.config import ServingConfig


@dataclass(frozen=True)
class Deployment:
    """What serves now: stable and canary versions, the canary's share, and every version in service."""

    stable: str | None
    canary: str | None
    canary_percent: float
    loaded: tuple[str, ...] = ()
    model_uris: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.stable is None and self.canary is None:
            return "nothing serves"
        text = f"stable {self.stable} at {100 - self.canary_percent:g}%"
        if self.canary is not None:
            text += f", canary {self.canary} at {self.canary_percent:g}%"
        others = [v for v in self.loaded if v not in (self.stable, self.canary)]
        if others:
            text += f" (also loaded, no traffic: {', '.join(others)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "stable": self.stable,
            "canary": self.canary,
            "canary_percent": self.canary_percent,
            "loaded": list(self.loaded),
        }


@dataclass(frozen=True)
class RollbackResult:
    deployment: Deployment
    # How long the target took to apply it (the server's own measure, when it gives one), and the
    # round trip of the call as the caller saw it.
    seconds: float | None
    round_trip_seconds: float


class DeploymentTarget(abc.ABC):
    """One place models serve. Every traffic change is one call to the target, applied atomically."""

    kind: str = ""

    @abc.abstractmethod
    def deployment(self) -> Deployment:
        """What serves now."""

    @abc.abstractmethod
    def load(self, version: str, model_uri: str) -> None:
        """Make a version ready to serve (loaded and warm), with no traffic. Idempotent."""

    @abc.abstractmethod
    def set_traffic(self, stable: str, canary: str | None, canary_percent: float) -> Deployment:
        """Send `canary_percent` of the traffic to the canary and the rest to stable, at once."""

    @abc.abstractmethod
    def rollback(self, reason: str, stable: str | None = None) -> RollbackResult:
        """All traffic to stable at once (canary to 0%); with `stable`, that loaded version takes it all."""

    @abc.abstractmethod
    def promote(self) -> Deployment:
        """The canary becomes stable at 100%; the old stable stays loaded, with no traffic."""

    @abc.abstractmethod
    def unload(self, version: str) -> None:
        """Take a version with no traffic out of service (frees its memory or machines)."""

    def metrics_url(self) -> str | None:
        """Where the canary analysis reads the serving metrics (Prometheus text); None if nowhere."""
        return None

    def url(self) -> str | None:
        """Where a person looks at the deployment."""
        return None

    def retire(self, keep: set[str]) -> list[str]:
        """Unload every version with no traffic that is not in `keep`; returns the versions unloaded."""
        current = self.deployment()
        gone = [
            v for v in current.loaded if v not in keep and v not in (current.stable, current.canary) and v is not None
        ]
        for version in gone:
            self.unload(version)
        return gone

    def close(self) -> None:  # noqa: B027 - optional hook for targets holding clients
        pass


def build_target(serving: ServingConfig, *, actor: str | None = None) -> DeploymentTarget:
    """The target `serving.target` names. Provider imports happen here, at run time, not at DAG parse."""
    if serving.target == "local":
        from tfpipe_airflow.deployment.local import LocalModelServerTarget

        return LocalModelServerTarget(serving.local, serving.model_name, actor=actor)
    if serving.target == "vertex_ai":
        from tfpipe_airflow.deployment.vertex_ai import VertexAIEndpointTarget

        assert serving.vertex_ai is not None
        return VertexAIEndpointTarget(serving.vertex_ai, serving.model_name)
    raise ValueError(f"unknown serving target {serving.target!r}")
