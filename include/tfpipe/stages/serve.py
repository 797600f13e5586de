"""Serve: run the model server (TensorFlow Serving's REST API) until SIGTERM or SIGINT.

    python -m tfpipe serve --config dags/configs/chicago_taxi.yaml [--model-uri URI --version V]
        [--from-registry champion] [--host H --port P]

Unlike the other stages this one runs until stopped: it prints one line when it is ready (with the URL),
serves, and on SIGTERM/SIGINT stops listening, finishes in-flight requests and prints the usual
TFPIPE_RESULT line. Without a model it starts empty and waits for POST /admin/versions.

On Vertex AI (our ML image as a custom prediction container) it honours AIP_HTTP_PORT (listening on all
interfaces), AIP_PREDICT_ROUTE, AIP_HEALTH_ROUTE and AIP_STORAGE_URI (the model, when no other is given).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from tfpipe.errors import ConfigError, StageError

log = logging.getLogger(__name__)
DEFAULT_VERSION = "1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the pipeline config (its `serving` and `registry`)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-uri", help="SavedModel folder (absolute path or gs://) to serve as stable")
    source.add_argument(
        "--from-registry",
        metavar="ALIAS",
        help="serve the registry's version with this alias (e.g. champion) as stable",
    )
    parser.add_argument(
        "--or-empty",
        action="store_true",
        help="with --from-registry: when no version has the alias yet (a new deployment), start serving nothing; "
        "the first rollout loads a model through the admin API",
    )
    parser.add_argument("--version", help=f"version number of --model-uri (default {DEFAULT_VERSION})")
    parser.add_argument("--host", help="interface to listen on (default serving.local.host)")
    parser.add_argument("--port", type=int, help="port (default serving.local.port; 0 picks a free one)")
    parser.add_argument(
        "--no-request-log", action="store_true", help="do not write the request/prediction log (benchmarks)"
    )


def from_registry(config: Any, alias: str) -> tuple[str, str]:
    """(version, model_uri) of the registered model's version with `alias`; a StageError if there is none."""
    if config.registry is None:
        raise ConfigError(f"{config.source_path}: --from-registry needs a `registry` section in the config")
    if config.evaluation is None:
        raise ConfigError(f"{config.source_path}: --from-registry needs evaluation.model_name (the registered name)")
    from tfpipe.registry.mlflow_registry import CHAMPION, ModelRegistry

    registry = ModelRegistry(config.registry.tracking_uri, config.registry.artifact_root, config.registry.experiment)
    name = config.evaluation.model_name
    if alias == CHAMPION:
        baseline = registry.find_baseline(name)
        if baseline.state != "champion" or not baseline.model_uri or not baseline.version:
            raise StageError(
                f"no champion in the registry at {registry.tracking_uri} ({baseline.reason}): "
                "run `make demo` first, or pass --model-uri"
            )
        return baseline.version, baseline.model_uri
    from mlflow.exceptions import MlflowException

    from tfpipe.registry.mlflow_registry import _loadable_uri

    try:
        version = registry.client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise StageError(
            f"no version of {name!r} has the alias {alias!r} in the registry at {registry.tracking_uri}: {exc}"
        ) from None
    source = registry.client.get_model_version_download_uri(name, version.version)
    uri = _loadable_uri(source)
    if uri is None:
        raise StageError(f"version {version.version} of {name!r} is stored at {source}, which TensorFlow cannot read")
    return str(version.version), uri


def _announce(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tfpipe.config import load_pipeline_config

    config = load_pipeline_config(args.config)
    if config.serving is None:
        raise ConfigError(f"{config.source_path}: no `serving` section: nothing says how to serve")
    serving = config.serving
    environ = os.environ
    model_uri = args.model_uri or None
    version = args.version
    if args.from_registry:
        if version:
            raise StageError("--version goes with --model-uri; the registry names the version itself")
        try:
            version, model_uri = from_registry(config, args.from_registry)
        except StageError as exc:
            if not args.or_empty:
                raise
            log.warning("%s: serving nothing until a rollout loads a model", exc)
            version = None
    elif model_uri is None and environ.get("AIP_STORAGE_URI"):
        model_uri = environ["AIP_STORAGE_URI"]
    elif version and model_uri is None:
        raise StageError("--version needs --model-uri")
    elif args.or_empty:
        raise StageError("--or-empty goes with --from-registry")
    if model_uri is not None and "://" not in model_uri:
        model_uri = os.path.abspath(model_uri)
    version = version or DEFAULT_VERSION

    host = args.host or serving.local.host
    port = args.port if args.port is not None else serving.local.port
    if environ.get("AIP_HTTP_PORT"):
        port = int(environ["AIP_HTTP_PORT"])
        host = args.host or "0.0.0.0"

    import asyncio

    # The event loop and the model threads share the GIL: a thread that wants it waits up to this interval
    # (5 ms by default), which would be the server's p99 on its own.
    sys.setswitchinterval(0.0005)
    from tfpipe.serving.server import AdminError, ModelServer, serve_until_stopped

    server = ModelServer.from_config(
        serving,
        request_log=not args.no_request_log,
        predict_route=environ.get("AIP_PREDICT_ROUTE") or None,
        health_route=environ.get("AIP_HEALTH_ROUTE") or None,
    )
    if server._admin_token is None:
        log.warning("%s is not set: the admin API is disabled", serving.local.admin_token_env)
    initial = (version, model_uri) if model_uri else None
    try:
        result = asyncio.run(serve_until_stopped(server, host, port, initial, announce=_announce))
    except AdminError as exc:
        raise StageError(f"cannot serve version {version} from {model_uri}: {exc.message}") from None
    except OSError as exc:
        raise StageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return {"model": serving.model_name, "version": version if model_uri else None, "model_uri": model_uri, **result}
