"""Promote: the version that now serves all traffic becomes the registry's `champion`.

Run after a canary rollout reached 100%. The change is appended to the model's deployment history
(who, when, which run), once per Airflow run key, so a retried task records it once.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", required=True, help="MLflow tracking and registry URI (SQLite path or http)")
    parser.add_argument("--model-name", required=True, help="registered model name")
    parser.add_argument("--version", required=True, help="the model version that now serves")
    parser.add_argument("--run-key", required=True, help="the Airflow run's key: the change is recorded once per key")
    parser.add_argument("--actor", default="", help="who or what promoted it (default: the pipeline)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tfpipe.registry.mlflow_registry import ModelRegistry

    registry = ModelRegistry(args.tracking_uri)
    previous = registry.promote_to_champion(
        args.model_name, args.version, actor=args.actor or "pipeline", run_key=args.run_key, reason="canary rollout"
    )
    return {"model_name": args.model_name, "version": str(args.version), "previous_champion": previous}
