"""The model server: TensorFlow Serving's REST API, a sticky stable/canary split and an admin API.

Serving (TF Serving clients work unchanged; <name> is `serving.model_name`):

    POST /v1/models/<name>:predict                          split between stable and canary
    POST /v1/models/<name>/versions/<v>:predict             one version, bypassing the split
    POST /v1/models/<name>/labels/<stable|canary>:predict   one label, bypassing the split
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]       model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature def
    GET  /healthz  /readyz  /metrics

The answer to a predict is `{"predictions": [...]}` with headers X-Model-Version and X-Model-Role. A canary
that fails a split request is counted (its 500 and a model error) and stable answers instead
(X-Model-Fallback: canary-error). Every bad request is a 4xx with `{"error": "..."}` naming the field.

Admin (every request needs `Authorization: Bearer <token>`, the token from the environment variable
`serving.local.admin_token_env`; the X-Actor header names who acts, for the log):

    GET    /admin/deployment         routing, loaded versions, generation
    POST   /admin/versions           {"version", "model_uri"}: load and warm up (traffic unchanged)
    PUT    /admin/traffic            {"stable", "canary", "canary_percent"}: swap the routing table
    POST   /admin/rollback           {"reason", "stable"?}: canary out at once
    POST   /admin/promote            the canary becomes stable at 100%; the old stable stays loaded
    DELETE /admin/versions/<v>       unload a version that does not serve
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from tfpipe.serving import models, routing
from tfpipe.serving.batching import Batcher
from tfpipe.serving.metrics import CONTENT_TYPE, ServingMetrics
from tfpipe.serving.models import AVAILABLE, LOADING, UNLOADING, LoadError, ModelVersion
from tfpipe.serving.request_log import RequestLog
from tfpipe.serving.routing import CANARY, STABLE, Routing
from tfpipe.serving.validation import RequestError, parse_json

log = logging.getLogger(__name__)
audit_log = logging.getLogger("tfpipe.serving.admin")

_V1_PATH = re.compile(
    r"^models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[A-Za-z_]*)|/(?P<metadata>metadata))?$"
)
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENCODINGS = {"", "identity", "gzip", "x-gzip", "deflate"}
NO_ROLE = "none"  # a version asked for directly that has no role in the routing


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ModelFailure(Exception):
    """The model raised or returned non-finite values for a request."""


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status, headers)


def _version_key(version: str) -> tuple:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _per_instance(outputs: dict[str, np.ndarray]) -> list[Any]:
    """One prediction per instance: the value for a single-output signature, else {output: value}."""
    if len(outputs) == 1:
        return next(iter(outputs.values())).tolist()
    names = list(outputs)
    lists = [outputs[name].tolist() for name in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]


class ModelServer:
    def __init__(
        self,
        model_name: str,
        *,
        max_batch_size: int = 64,
        batch_timeout_ms: float = 1.0,
        max_request_bytes: int = 1024 * 1024,
        max_instances: int = 1000,
        sticky_header: str = "X-Request-Key",
        admin_token: str | None = None,
        admin_token_env: str = "TFPIPE_SERVING_ADMIN_TOKEN",
        request_log: RequestLog | None = None,
        metrics: ServingMetrics | None = None,
        predict_route: str | None = None,
        health_route: str | None = None,
        shutdown_timeout: float = 30.0,
    ) -> None:
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout_ms / 1000.0
        self.max_request_bytes = max_request_bytes
        self.max_instances = max_instances
        self.sticky_header = sticky_header
        self._admin_token = admin_token.encode() if admin_token else None
        self.admin_token_env = admin_token_env
        self.metrics = metrics or ServingMetrics(model_name)
        self.request_log = request_log
        if request_log is not None and request_log.metrics is None:
            request_log.metrics = self.metrics
        self.predict_route = predict_route
        self.health_route = health_route
        self.shutdown_timeout = shutdown_timeout
        self.versions: dict[str, ModelVersion] = {}
        self.routing: Routing[ModelVersion] = Routing()
        self.draining = False
        self.started_at = time.time()
        self._loading: dict[str, asyncio.Future] = {}
        self._arriving = 0  # predict requests that arrived and have not queued their rows (or failed) yet
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self.metrics.set_traffic(None, 0.0)

    @classmethod
    def from_config(
        cls,
        serving: Any,
        *,
        environ: Mapping[str, str] | None = None,
        request_log: bool = True,
        **overrides: Any,
    ) -> ModelServer:
        """A server from `ServingConfig` (tfpipe.config); the admin token comes from the environment."""
        environ = os.environ if environ is None else environ
        local = serving.local
        metrics = ServingMetrics(serving.model_name)
        log_writer = None
        if request_log:
            directory = local.request_log.dir
            if "://" in directory:
                log.warning("request_log.dir %s is not a local folder: the request log is off", directory)
            else:
                log_writer = RequestLog(
                    directory,
                    sample_rate=local.request_log.sample_rate,
                    max_bytes=local.request_log.max_bytes,
                    backups=local.request_log.backups,
                    metrics=metrics,
                )
        options: dict[str, Any] = {
            "max_batch_size": local.max_batch_size,
            "batch_timeout_ms": local.batch_timeout_ms,
            "max_request_bytes": local.max_request_bytes,
            "max_instances": local.max_instances,
            "sticky_header": local.sticky_header,
            "admin_token": environ.get(local.admin_token_env) or None,
            "admin_token_env": local.admin_token_env,
            "request_log": log_writer,
            "metrics": metrics,
        }
        options.update(overrides)
        return cls(serving.model_name, **options)

    # -----------------------------------------------------------------------------------------------------
    # Application

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=self.max_request_bytes)
        add = app.router.add_route
        add("*", "/v1/{path:.*}", self._v1)
        add("GET", "/healthz", self._healthz)
        add("GET", "/readyz", self._readyz)
        add("GET", "/metrics", self._metrics)
        add("GET", "/admin/deployment", self._admin_deployment)
        add("POST", "/admin/versions", self._admin_load)
        add("DELETE", "/admin/versions/{version}", self._admin_unload)
        add("PUT", "/admin/traffic", self._admin_traffic)
        add("POST", "/admin/rollback", self._admin_rollback)
        add("POST", "/admin/promote", self._admin_promote)
        if self.predict_route and not self.predict_route.startswith("/v1/"):
            add("POST", self.predict_route, self._vertex_predict)
        if self.health_route and self.health_route not in ("/healthz", "/readyz"):
            add("GET", self.health_route, self._readyz)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 8501) -> str:
        """Listen on host:port (0: any free port) and return the base URL."""
        models.configure_threads()
        self._runner = web.AppRunner(
            self.app(), access_log=None, auto_decompress=False, shutdown_timeout=self.shutdown_timeout
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        bound = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        return self.url

    async def stop(self) -> None:
        """Stop listening, finish in-flight requests, then unload everything and flush the request log."""
        self.draining = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for version in list(self.versions.values()):
            if version.batcher is not None:
                await version.batcher.close()
            version.release()
        self.versions.clear()
        self._loader.shutdown(wait=False, cancel_futures=True)
        if self.request_log is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.request_log.close)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/admin/") or request.path == "/admin":
            denied = self._check_admin(request)
            if denied is not None:
                return denied
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 404:
                return _error(404, f"no such endpoint: {request.method} {request.path}")
            if exc.status == 405:
                allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
                return _error(
                    405, f"{request.method} is not allowed on {request.path}; use {allowed}", {"Allow": allowed}
                )
            if exc.status == 413:
                return _error(413, f"the body is larger than this server's limit of {self.max_request_bytes} bytes")
            return _error(exc.status, exc.reason or str(exc))

    # -----------------------------------------------------------------------------------------------------
    # Health and metrics

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting down"
        stable = self.routing.stable
        if stable is None:
            loading = [v for v, m in self.versions.items() if m.state == LOADING]
            return False, f"loading version {loading[0]}" if loading else "no stable version is serving"
        if stable.state != AVAILABLE:
            return False, f"stable version {stable.version} is {stable.state}"
        return True, f"stable version {stable.version} is serving"

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, reason = self.ready()
        routing_now = self.routing
        body = {
            "status": "ready" if ok else "not ready",
            "reason": reason,
            "model": self.model_name,
            "stable": routing_now.stable.version if routing_now.stable else None,
            "canary": routing_now.canary.version if routing_now.canary else None,
        }
        return _json(body, 200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    # -----------------------------------------------------------------------------------------------------
    # TF Serving's API

    async def _v1(self, request: web.Request) -> web.Response:
        match = _V1_PATH.match(request.match_info["path"])
        if match is None:
            if request.method == "POST" and request.path.endswith(":predict"):
                return await self._predict(request, None, None, None, path_error=f"no such endpoint: {request.path}")
            return _error(404, f"no such endpoint: {request.method} {request.path}")
        name, version, label, verb, metadata = match.group("name", "version", "label", "verb", "metadata")
        if verb is not None:
            if verb != "predict":
                message = (
                    f":{verb} is not supported: this model's signature answers :predict only"
                    if verb in ("classify", "regress")
                    else f"no such endpoint: {request.path} (did you mean :predict?)"
                )
                status = 400 if verb in ("classify", "regress") else 404
                if request.method == "POST":
                    self.metrics.observe_request("", "", status, 0.0)
                return _error(status, message)
            if request.method != "POST":
                return _error(405, f"{request.method} is not allowed on {request.path}; use POST", {"Allow": "POST"})
            return await self._predict(request, name, version, label)
        if request.method not in ("GET", "HEAD"):
            return _error(405, f"{request.method} is not allowed on {request.path}; use GET", {"Allow": "GET"})
        if name != self.model_name:
            return self._unknown_model(name)
        if metadata:
            return self._metadata(version, label)
        return self._status(version, label)

    def _unknown_model(self, name: str) -> web.Response:
        return _error(404, f"model {name!r} is not served here; this server serves {self.model_name!r}")

    def _find(self, version: str | None, label: str | None) -> tuple[ModelVersion | None, str | None]:
        """The version a path names (version, label or, with neither, stable), or why there is none."""
        if version is not None:
            found = self.versions.get(version)
            if found is None or found.state != AVAILABLE:
                state = f" (it is {found.state})" if found is not None else ""
                return None, f"version {version} of {self.model_name!r} is not available{state}; {self._available()}"
            return found, None
        if label is not None:
            if label not in routing.ROLES:
                return None, f"unknown label {label!r}: labels are 'stable' and 'canary'"
            found = self.routing.by_label(label)
            if found is None:
                return None, f"label {label!r} of {self.model_name!r} is not assigned to any version now"
            return found, None
        if self.routing.stable is None:
            return None, f"no version of {self.model_name!r} is serving yet"
        return self.routing.stable, None

    def _available(self) -> str:
        available = sorted((v for v, m in self.versions.items() if m.state == AVAILABLE), key=_version_key)
        return f"available: {', '.join(available)}" if available else "none is available"

    @staticmethod
    def _tf_status(version: ModelVersion) -> dict[str, Any]:
        return {"version": version.version, "state": version.state, "status": {"error_code": "OK", "error_message": ""}}

    def _status(self, version: str | None, label: str | None) -> web.Response:
        if version is None and label is None:
            entries = [self._tf_status(m) for _, m in sorted(self.versions.items(), key=lambda x: _version_key(x[0]))]
            if not entries:
                return _error(404, f"Could not find any versions of model {self.model_name}")
            return _json({"model_version_status": entries})
        if version is not None and version in self.versions:
            return _json({"model_version_status": [self._tf_status(self.versions[version])]})
        found, problem = self._find(version, label)
        if found is None:
            return _error(404, problem or "not found")
        return _json({"model_version_status": [self._tf_status(found)]})

    def _metadata(self, version: str | None, label: str | None) -> web.Response:
        found, problem = self._find(version, label)
        if found is None:
            return _error(404, problem or "not found")
        return _json(found.metadata(self.model_name))

    async def _body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            raise RequestError(
                413, f"the body has {length} bytes, more than this server's limit of {self.max_request_bytes}"
            )
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _ENCODINGS:
            raise RequestError(
                415, f"Content-Encoding {encoding!r} is not supported: send the body uncompressed, gzip or deflate"
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(
                413, f"the body is larger than this server's limit of {self.max_request_bytes} bytes"
            ) from None
        if encoding in ("", "identity"):
            return raw
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16 if "gzip" in encoding else zlib.MAX_WBITS)
        try:
            body = decompressor.decompress(raw, self.max_request_bytes + 1)
        except zlib.error as exc:
            raise RequestError(400, f"the body is not valid {encoding} data: {exc}") from None
        if len(body) > self.max_request_bytes or decompressor.unconsumed_tail:
            raise RequestError(
                413, f"the decompressed body is larger than this server's limit of {self.max_request_bytes} bytes"
            )
        if not decompressor.eof:
            raise RequestError(400, f"the {encoding} body is truncated")
        return body

    async def _vertex_predict(self, request: web.Request) -> web.Response:
        return await self._predict(request, self.model_name, None, None, vertex=True)

    async def _predict(
        self,
        request: web.Request,
        name: str | None,
        version_name: str | None,
        label: str | None,
        *,
        path_error: str | None = None,
        vertex: bool = False,
    ) -> web.Response:
        started = time.perf_counter()
        key = request.headers.get(self.sticky_header) or None
        self._arriving += 1
        try:
            if path_error is not None:
                raise RequestError(404, path_error)
            if name != self.model_name:
                raise RequestError(404, f"model {name!r} is not served here; this server serves {self.model_name!r}")
            document = parse_json(await self._body(request))
            if vertex and isinstance(document, dict):
                document.pop("parameters", None)  # Vertex AI's optional request parameters: none apply here
            # From here on nothing awaits until the rows are queued: the version chosen cannot be unloaded first.
            split = version_name is None and label is None
            if split:
                current = self.routing
                version, role = current.choose(key)
                if version is None:
                    raise RequestError(503, f"no version of {self.model_name!r} is serving yet")
            else:
                version, problem = self._find(version_name, label)
                if version is None:
                    raise RequestError(404, problem or "not found")
                role = self.routing.role_of(version) or NO_ROLE
            assert version.signature is not None
            columns, rows = version.signature.columns(document)
            columnar = "inputs" in document
            try:
                future = version.batcher.submit(columns, rows)
            except RuntimeError:  # cannot happen while routed; a safe answer if it ever does
                raise RequestError(503, f"version {version.version} is unloading; retry") from None
        except RequestError as exc:
            self.metrics.observe_request("", "", exc.status, time.perf_counter() - started)
            return _error(exc.status, exc.message)
        finally:
            self._arriving -= 1

        headers = {"X-Model-Version": version.version, "X-Model-Role": role}
        fallback_from = None
        try:
            outputs = await self._answer(future, version)
        except ModelFailure as exc:
            fallback = self.routing.stable
            if not (split and role == CANARY and fallback is not None and fallback is not version):
                return self._failed(version, role, exc, started, key, columns, headers)
            # The canary failed: count it against the canary, answer from stable.
            self.metrics.observe_request(version.version, CANARY, 500, time.perf_counter() - started)
            self.metrics.fallbacks.labels(self.model_name, version.version).inc()
            fallback_from = version.version
            version, role = fallback, STABLE
            headers = {"X-Model-Version": version.version, "X-Model-Role": role, "X-Model-Fallback": "canary-error"}
            try:
                outputs = await self._answer(version.batcher.submit(columns, rows), version)
            except (ModelFailure, RuntimeError) as stable_exc:
                return self._failed(version, role, stable_exc, started, key, columns, headers, fallback_from)
        predictions = _per_instance(outputs)
        # TF Serving answers the row format with "predictions", the columnar format with "outputs".
        if columnar:
            answer = {"outputs": predictions if len(outputs) == 1 else {k: v.tolist() for k, v in outputs.items()}}
        else:
            answer = {"predictions": predictions}
        response = web.Response(body=orjson.dumps(answer), content_type="application/json", headers=headers)
        self.metrics.observe_request(version.version, role, 200, time.perf_counter() - started)
        if len(outputs) == 1 and predictions and isinstance(predictions[0], float):
            self.metrics.observe_predictions(version.version, role, predictions)
        self._log_request(version.version, role, key, columns, predictions, started, 200, fallback_from)
        return response

    async def _answer(self, future: asyncio.Future, version: ModelVersion) -> dict[str, np.ndarray]:
        try:
            outputs = await future
        except Exception as exc:
            self.metrics.model_errors.labels(self.model_name, version.version).inc()
            raise ModelFailure(f"model version {version.version} failed: {models.describe_error(exc)}") from exc
        for name, values in outputs.items():
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                self.metrics.model_errors.labels(self.model_name, version.version).inc()
                raise ModelFailure(f"model version {version.version} returned non-finite {name}")
        return outputs

    def _failed(
        self,
        version: ModelVersion,
        role: str,
        exc: BaseException,
        started: float,
        key: str | None,
        columns: dict[str, np.ndarray],
        headers: dict[str, str],
        fallback_from: str | None = None,
    ) -> web.Response:
        log.warning("predict failed on version %s (%s): %s", version.version, role, exc)
        self.metrics.observe_request(version.version, role, 500, time.perf_counter() - started)
        self._log_request(version.version, role, key, columns, None, started, 500, fallback_from)
        return _error(500, str(exc), headers)

    def _log_request(
        self,
        version: str,
        role: str,
        key: str | None,
        columns: dict[str, np.ndarray],
        predictions: Any,
        started: float,
        status: int,
        fallback_from: str | None = None,
    ) -> None:
        if self.request_log is None or not self.request_log.sampled():
            return
        self.request_log.record(
            model=self.model_name,
            version=version,
            role=role,
            key=key,
            columns=columns,
            predictions=predictions,
            latency_ms=(time.perf_counter() - started) * 1000,
            status=status,
            fallback_from=fallback_from,
        )

    # -----------------------------------------------------------------------------------------------------
    # Deployment: loading, routing

    def deployment(self) -> dict[str, Any]:
        current = self.routing

        def entry(version: ModelVersion | None) -> dict[str, str] | None:
            return None if version is None else {"version": version.version, "model_uri": version.model_uri}

        loaded = [m.describe() for _, m in sorted(self.versions.items(), key=lambda x: _version_key(x[0]))]
        return {
            "model": self.model_name,
            "stable": entry(current.stable),
            "canary": entry(current.canary),
            "canary_percent": float(current.canary_percent),
            "loaded": loaded,
            "generation": current.generation,
        }

    def _routing_summary(self) -> dict[str, Any]:
        current = self.routing
        return {
            "stable": current.stable.version if current.stable else None,
            "canary": current.canary.version if current.canary else None,
            "canary_percent": float(current.canary_percent),
            "generation": current.generation,
        }

    async def load_version(self, version: str, model_uri: str) -> ModelVersion:
        """Load and warm up a version in the loader thread; traffic keeps flowing and is not routed to it."""
        existing = self.versions.get(version)
        if existing is not None:
            if models.normalize_uri(existing.model_uri) != models.normalize_uri(model_uri):
                raise AdminError(
                    409,
                    f"version {version} is already loaded from {existing.model_uri}, not {model_uri}: "
                    "unload it first or load under another version",
                )
            if existing.state == LOADING:
                return await asyncio.shield(self._loading[version])
            if existing.state == UNLOADING:
                raise AdminError(409, f"version {version} is unloading; load it again when it is gone")
            return existing
        loop = asyncio.get_running_loop()
        model = ModelVersion(version, model_uri)
        self.versions[version] = model
        done: asyncio.Future = loop.create_future()
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody else may be waiting
        self._loading[version] = done
        log.info("loading version %s from %s", version, model_uri)
        try:
            await loop.run_in_executor(self._loader, model.load, self.max_instances, self.max_batch_size)
            stable = self.routing.stable
            difference = None if stable is None or stable is model else model.same_inputs(stable)
            if difference:
                raise LoadError(
                    f"version {version}'s serving_default inputs differ from stable version {stable.version}'s: "
                    f"it {difference}"
                )
        except BaseException as exc:
            self.versions.pop(version, None)
            self._loading.pop(version, None)
            model.state = models.END
            loop.run_in_executor(None, model.release)
            if isinstance(exc, LoadError):
                error = AdminError(422, str(exc))
            elif isinstance(exc, Exception):
                log.exception("loading version %s failed", version)
                error = AdminError(500, f"loading version {version} failed: {models.describe_error(exc)}")
            else:
                done.cancel()
                raise
            done.set_exception(error)
            raise error from None
        model.batcher = Batcher(
            model.run,
            model.executor,
            max_batch_size=self.max_batch_size,
            timeout=self.batch_timeout,
            on_batch=self.metrics.batch_size.observe,
            more_coming=lambda: self._arriving > 0,
        )
        model.batcher.start()
        # TensorFlow and a model make ~400k long-lived objects: a full garbage collection over them stalls
        # every request for hundreds of milliseconds. Loaded objects live until unloaded; the collector
        # leaves them alone from now on.
        gc.freeze()
        model.state = AVAILABLE
        self._loading.pop(version, None)
        self.metrics.set_loaded(version, True)
        log.info("version %s is AVAILABLE (loaded and warmed up in %.1f s)", version, model.load_seconds or 0)
        done.set_result(model)
        return model

    def _available_version(self, version: str, role: str) -> ModelVersion:
        model = self.versions.get(version)
        if model is None:
            raise AdminError(
                409, f"{role} version {version} is not loaded: POST /admin/versions first ({self._available()})"
            )
        if model.state != AVAILABLE:
            raise AdminError(409, f"{role} version {version} is {model.state}, not AVAILABLE")
        return model

    def set_routing(
        self, stable: ModelVersion | None, canary: ModelVersion | None = None, canary_percent: float = 0.0
    ) -> bool:
        """Swap the routing table in one assignment; False when nothing changes."""
        current = self.routing
        if (current.stable, current.canary, float(current.canary_percent)) == (stable, canary, float(canary_percent)):
            return False
        self.routing = Routing(stable, canary, float(canary_percent), current.generation + 1)
        self.metrics.set_traffic(stable.version if stable else None, float(canary_percent))
        return True

    async def unload_version(self, version: str) -> None:
        model = self.versions.get(version)
        if model is None:
            raise AdminError(404, f"version {version} is not loaded ({self._available()})")
        if model.state == LOADING:
            raise AdminError(409, f"version {version} is still loading")
        role = self.routing.role_of(model)
        if role:
            raise AdminError(409, f"version {version} is the {role} version: route traffic away from it first")
        model.state = UNLOADING
        self.versions.pop(version, None)
        self.metrics.set_loaded(version, False)
        if model.batcher is not None:
            await model.batcher.close()  # requests routed to it before the change still finish
        await asyncio.get_running_loop().run_in_executor(None, model.release)

    # -----------------------------------------------------------------------------------------------------
    # Admin API

    def _check_admin(self, request: web.Request) -> web.Response | None:
        if self._admin_token is None:
            return _error(403, f"admin API disabled: {self.admin_token_env} is not set")
        header = request.headers.get("Authorization")
        if not header:
            return _error(
                401, "the admin API needs an Authorization: Bearer <token> header", {"WWW-Authenticate": "Bearer"}
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._admin_token):
            return _error(403, "wrong admin token")
        return None

    async def _admin_body(self, request: web.Request, *, optional: bool = False) -> dict[str, Any]:
        try:
            raw = await self._body(request)
        except RequestError as exc:
            raise AdminError(exc.status, exc.message) from None
        if optional and not raw.strip():
            return {}
        try:
            document = parse_json(raw)
        except RequestError as exc:
            raise AdminError(400, exc.message) from None
        if not isinstance(document, dict):
            raise AdminError(400, "the body must be a JSON object")
        return document

    @staticmethod
    def _version_arg(document: Mapping[str, Any], key: str, *, required: bool) -> str | None:
        value = document.get(key)
        if value is None:
            if required:
                raise AdminError(400, f"'{key}' is required")
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _VERSION.match(value):
            raise AdminError(
                400, f"'{key}' must be a version such as \"3\" (letters, digits, '.', '_', '-'), got {value!r}"
            )
        return value

    def _audit(self, request: web.Request, action: str, before: dict[str, Any], **details: Any) -> None:
        actor = request.headers.get("X-Actor") or "unknown"
        after = self._routing_summary()
        audit_log.info(
            "admin %s by %s: %s",
            action,
            actor,
            orjson.dumps({"before": before, "after": after, **details}).decode(),
        )

    async def _admin(self, request: web.Request, action: Any) -> web.Response:
        try:
            return await action()
        except AdminError as exc:
            audit_log.info(
                "admin %s %s by %s refused (%d): %s",
                request.method,
                request.path,
                request.headers.get("X-Actor") or "unknown",
                exc.status,
                exc.message,
            )
            return _error(exc.status, exc.message)

    async def _admin_deployment(self, request: web.Request) -> web.Response:
        return _json(self.deployment())

    async def _admin_load(self, request: web.Request) -> web.Response:
        async def action() -> web.Response:
            document = await self._admin_body(request)
            version = self._version_arg(document, "version", required=True)
            uri = document.get("model_uri")
            if not isinstance(uri, str) or not uri.strip():
                raise AdminError(400, "'model_uri' is required: the SavedModel folder (absolute path or gs://)")
            before = self._routing_summary()
            started = time.perf_counter()
            model = await self.load_version(version, uri.strip())
            self._audit(request, "load", before, version=version, model_uri=model.model_uri)
            return _json({**self.deployment(), "seconds": round(time.perf_counter() - started, 3)})

        return await self._admin(request, action)

    async def _admin_unload(self, request: web.Request) -> web.Response:
        async def action() -> web.Response:
            version = request.match_info["version"]
            before = self._routing_summary()
            await self.unload_version(version)
            self._audit(request, "unload", before, version=version)
            return _json(self.deployment())

        return await self._admin(request, action)

    async def _admin_traffic(self, request: web.Request) -> web.Response:
        async def action() -> web.Response:
            document = await self._admin_body(request)
            unknown = sorted(set(document) - {"stable", "canary", "canary_percent"})
            if unknown:
                raise AdminError(400, f"unknown key(s) {unknown}: send stable, canary and canary_percent")
            stable_name = self._version_arg(document, "stable", required=False)
            canary_name = self._version_arg(document, "canary", required=False)
            percent = document.get("canary_percent", None if canary_name else 0)
            if stable_name is None:
                raise AdminError(422, "a canary needs a stable version" if canary_name else "'stable' is required")
            if percent is None:
                raise AdminError(422, "'canary_percent' is required with a canary (0 to 100)")
            if (
                isinstance(percent, bool)
                or not isinstance(percent, int | float)
                or not math.isfinite(percent)
                or not 0 <= percent <= 100
            ):
                raise AdminError(422, f"'canary_percent' must be a number from 0 to 100, got {percent!r}")
            if canary_name is None and percent != 0:
                raise AdminError(422, f"'canary_percent' is {percent} but there is no canary: send 0 or a canary")
            if canary_name is not None and canary_name == stable_name:
                raise AdminError(422, f"version {stable_name} cannot be both stable and canary")
            stable = self._available_version(stable_name, "stable")
            canary = self._available_version(canary_name, "canary") if canary_name else None
            if canary is not None:
                difference = canary.same_inputs(stable)
                if difference:
                    raise AdminError(
                        422, f"canary version {canary.version}'s inputs differ from stable's: it {difference}"
                    )
            before = self._routing_summary()
            changed = self.set_routing(stable, canary, float(percent))
            self._audit(request, "traffic", before, changed=changed)
            return _json(self.deployment())

        return await self._admin(request, action)

    async def _admin_rollback(self, request: web.Request) -> web.Response:
        started = time.perf_counter()

        async def action() -> web.Response:
            document = await self._admin_body(request, optional=True)
            reason = document.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise AdminError(400, "'reason' must be a string")
            stable_name = self._version_arg(document, "stable", required=False)
            stable = self._available_version(stable_name, "stable") if stable_name else self.routing.stable
            if stable is None:
                raise AdminError(409, "there is no stable version to roll back to: send 'stable'")
            before = self._routing_summary()
            self.set_routing(stable, None, 0.0)
            seconds = time.perf_counter() - started
            self._audit(request, "rollback", before, reason=reason or "", seconds=round(seconds, 6))
            return _json({**self.deployment(), "seconds": round(seconds, 6), "reason": reason or ""})

        return await self._admin(request, action)

    async def _admin_promote(self, request: web.Request) -> web.Response:
        async def action() -> web.Response:
            await self._admin_body(request, optional=True)
            current = self.routing
            if current.canary is None:
                raise AdminError(409, "there is no canary to promote")
            before = self._routing_summary()
            self.set_routing(current.canary, None, 0.0)
            self._audit(request, "promote", before, previous_stable=before["stable"])
            return _json(self.deployment())

        return await self._admin(request, action)


# ---------------------------------------------------------------------------------------------------------
# Running it


async def serve_until_stopped(
    server: ModelServer,
    host: str,
    port: int,
    initial: tuple[str, str] | None,
    stop: asyncio.Event | None = None,
    announce: Any = None,
) -> dict[str, Any]:
    """Run until SIGTERM/SIGINT (or `stop` is set): listen, load the initial version, serve, drain."""
    import signal

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not in the main thread
            loop.add_signal_handler(signum, stop.set)
    started = time.perf_counter()
    url = await server.start(host, port)
    log.info("listening on %s (ready once a stable version is loaded)", url)
    try:
        if initial is not None:
            version, uri = initial
            model = await server.load_version(version, uri)
            server.set_routing(model)
            if model.warmup_error:
                log.error("stable version %s failed its warm-up call: %s", version, model.warmup_error)
        ready = f"{url}/v1/models/{server.model_name}"
        stable = server.routing.stable
        message = (
            f"tfpipe model server ready at {ready}:predict (stable version {stable.version})"
            if stable
            else f"tfpipe model server listening at {url} with no model: load one with POST /admin/versions"
        )
        if announce is not None:
            announce(message)
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
    finally:
        requests = sum(
            sample.value
            for metric in server.metrics.requests.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
        await server.stop()
    return {"url": url, "served_seconds": round(time.perf_counter() - started, 3), "requests": int(requests)}


class ServerThread:
    """The server on its own event loop in a background thread: for tests and benchmarks."""

    def __init__(self, server: ModelServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="model-server", daemon=True)
        self.url = ""

    def start(self) -> str:
        self._thread.start()
        self.url = self.call(self.server.start(self.host, self.port))
        return self.url

    def call(self, coroutine: Any, timeout: float | None = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def run(self, function: Any, *args: Any) -> Any:
        """Call a plain function on the server's loop (e.g. set_routing) and return its result."""

        async def call() -> Any:
            return function(*args)

        return self.call(call())

    def stop(self) -> None:
        try:
            self.call(self.server.stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
