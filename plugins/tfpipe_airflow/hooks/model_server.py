"""ModelServerHook: our model server's admin API and metrics (the embedded default deployment target).

The hook owns where the server is and its credentials: an Airflow connection (default
`tfpipe_model_server`, `serving.local.conn_id`) of type http with host, port and the admin bearer token
as password. Without such a connection it falls back to the pipeline config's `serving.local` host and
port and the token in the environment variable the server itself reads (`serving.local.admin_token_env`),
which is what the embedded default (worker and server on one machine) has; the log says so.

Admin calls are synchronous (the operator makes a handful); the metrics scrape has an async variant for
the trigger, which runs in the triggerer's event loop. The scrape needs no token: /metrics is public.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException

from tfpipe.config import LocalServingConfig

DEFAULT_TIMEOUT = 30.0
# Loading a SavedModel and warming it up takes seconds; a big one longer.
LOAD_TIMEOUT = 600.0


class ModelServerError(AirflowException):
    """The model server answered with an error, or could not be reached; a retry may help."""

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class ModelServerRefused(AirflowFailException):
    """The server refused the request for a reason a retry cannot fix: bad token, incompatible model."""

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class ServerAddress:
    base_url: str
    token: str | None
    source: str


class ModelServerHook(BaseHook):
    """Talks to one model server: `GET /admin/deployment`, `POST /admin/versions`, `PUT /admin/traffic`,
    `POST /admin/rollback`, `POST /admin/promote`, `DELETE /admin/versions/<v>`, and `GET /metrics`.

    :param model_server_conn_id: the Airflow connection (type http: host, port, password = admin token).
    :param fallback: the pipeline config's `serving.local`, used when the connection is not defined.
    :param actor: sent as `X-Actor`, so the server's log says who changed the deployment.
    """

    conn_name_attr = "model_server_conn_id"
    default_conn_name = "tfpipe_model_server"
    conn_type = "http"
    hook_name = "tfpipe model server"

    def __init__(
        self,
        model_server_conn_id: str = default_conn_name,
        *,
        fallback: LocalServingConfig | None = None,
        actor: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()
        self.model_server_conn_id = model_server_conn_id
        self.fallback = fallback
        self.actor = actor
        self.timeout = timeout
        self._address: ServerAddress | None = None
        self._client: httpx.Client | None = None

    # -- where and who ------------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login", "extra"],
            "relabeling": {"password": "Admin token"},  # pragma: allowlist secret
            "placeholders": {"host": "127.0.0.1", "port": "8501", "schema": "http"},
        }

    def address(self) -> ServerAddress:
        if self._address is None:
            self._address = self._resolve()
        return self._address

    def _resolve(self) -> ServerAddress:
        try:
            conn = self.get_connection(self.model_server_conn_id)
        except AirflowNotFoundException:
            if self.fallback is None:
                raise
            token = os.environ.get(self.fallback.admin_token_env) or None
            self.log.info(
                "no Airflow connection %r: using serving.local (%s:%s) and the token in $%s%s",
                self.model_server_conn_id,
                self.fallback.host,
                self.fallback.port,
                self.fallback.admin_token_env,
                "" if token else " (unset: admin calls will be refused)",
            )
            return ServerAddress(f"http://{self.fallback.host}:{self.fallback.port}", token, "config")
        host = (conn.host or "").rstrip("/")
        if not host:
            raise ModelServerRefused(f"connection {self.model_server_conn_id!r} has no host")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}"
        if conn.port:
            host = f"{host}:{conn.port}"
        return ServerAddress(host, conn.password or None, f"connection {self.model_server_conn_id}")

    @property
    def base_url(self) -> str:
        return self.address().base_url

    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    def get_conn(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _headers(self) -> dict[str, str]:
        token = self.address().token
        if not token:
            raise ModelServerRefused(
                f"no admin token for the model server at {self.base_url}: set the password of connection "
                f"{self.model_server_conn_id!r}" + (f" or ${self.fallback.admin_token_env}" if self.fallback else "")
            )
        headers = {"Authorization": f"Bearer {token}"}
        if self.actor:
            headers["X-Actor"] = self.actor
        return headers

    # -- admin API ----------------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> dict[str, Any]:
        try:
            response = self.get_conn().request(
                method, path, json=body, headers=self._headers(), timeout=timeout or self.timeout
            )
        except httpx.HTTPError as exc:
            raise ModelServerError(f"{method} {self.base_url}{path} failed: {type(exc).__name__}: {exc}") from exc
        detail: Any
        try:
            detail = response.json()
        except ValueError:
            detail = response.text[:500]
        if response.status_code in (401, 403):
            raise ModelServerRefused(
                f"{method} {path}: the model server refused the admin token ({response.status_code}: "
                f"{_message(detail)}); check the password of connection {self.model_server_conn_id!r}",
                response.status_code,
                detail,
            )
        if response.status_code in (400, 404, 409, 422):
            raise ModelServerRefused(
                f"{method} {path}: {response.status_code} {_message(detail)}", response.status_code, detail
            )
        if response.status_code >= 300:
            raise ModelServerError(
                f"{method} {path}: {response.status_code} {_message(detail)}", response.status_code, detail
            )
        return detail if isinstance(detail, dict) else {"response": detail}

    def get_deployment(self) -> dict[str, Any]:
        return self._admin("GET", "/admin/deployment")

    def load_version(self, version: str, model_uri: str) -> dict[str, Any]:
        """Load and warm a version up, with no traffic (idempotent for the same URI)."""
        return self._admin(
            "POST", "/admin/versions", {"version": str(version), "model_uri": model_uri}, timeout=LOAD_TIMEOUT
        )

    def set_traffic(self, stable: str, canary: str | None, canary_percent: float) -> dict[str, Any]:
        """Point stable, canary and the canary's share at once (one atomic change on the server)."""
        return self._admin(
            "PUT",
            "/admin/traffic",
            {
                "stable": str(stable),
                "canary": None if canary is None else str(canary),
                "canary_percent": canary_percent,
            },
        )

    def rollback(self, reason: str, stable: str | None = None) -> dict[str, Any]:
        """Canary to 0% in one step (or `stable` to 100% at once); the answer has the server's `seconds`."""
        body: dict[str, Any] = {"reason": reason}
        if stable is not None:
            body["stable"] = str(stable)
        started = time.perf_counter()
        answer = self._admin("POST", "/admin/rollback", body)
        answer["round_trip_seconds"] = time.perf_counter() - started
        return answer

    def promote(self) -> dict[str, Any]:
        return self._admin("POST", "/admin/promote", {})

    def unload_version(self, version: str) -> dict[str, Any]:
        return self._admin("DELETE", f"/admin/versions/{quote(str(version), safe='')}")

    def scrape_metrics(self) -> str:
        try:
            response = self.get_conn().get("/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ModelServerError(f"GET {self.metrics_url()} failed: {type(exc).__name__}: {exc}") from exc
        return response.text

    def test_connection(self) -> tuple[bool, str]:
        try:
            deployment = self.get_deployment()
        except Exception as exc:
            return False, str(exc)
        return True, f"model server at {self.base_url}: generation {deployment.get('generation')}"


async def ascrape_metrics(url: str, timeout: float = 10.0) -> str:
    """The Prometheus text at `url` (async, for triggers). Raises httpx.HTTPError when it cannot be had."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.text


def _message(detail: Any) -> str:
    if isinstance(detail, dict):
        for key in ("detail", "error", "message"):
            if detail.get(key):
                return str(detail[key])
    return str(detail)[:300]
