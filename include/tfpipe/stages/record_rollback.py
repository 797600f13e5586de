"""Record rollback: after traffic moved back to a version, make it the `champion` again and record
who rolled back, when and why, in the model's deployment history and on both versions' tags."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", required=True, help="MLflow tracking and registry URI (SQLite path or http)")
    parser.add_argument("--model-name", required=True, help="registered model name")
    parser.add_argument("--version", required=True, help="the version that now serves all traffic")
    parser.add_argument("--actor", required=True, help="who rolled back (the user who triggered the run)")
    parser.add_argument("--reason", required=True, help="why")
    parser.add_argument("--run-key", required=True, help="the Airflow run's key: recorded once per key")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tfpipe.registry.mlflow_registry import ModelRegistry

    registry = ModelRegistry(args.tracking_uri)
    previous = registry.record_rollback(
        args.model_name, args.version, actor=args.actor, reason=args.reason, run_key=args.run_key
    )
    recorded = next(
        (e for e in reversed(registry.deployment_history(args.model_name)) if e.get("run_key") == args.run_key),
        {},
    )
    return {"version": str(args.version), "previous_champion": previous, "recorded_at": recorded.get("at")}
