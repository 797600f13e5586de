"""Rollback target: the registered version a rollback moves traffic to, and where its SavedModel is.

The version named by a person, or by default the champion before the current one (from the model's
deployment history). An unknown version, or no earlier champion, is an error that says so (exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", required=True, help="MLflow tracking and registry URI (SQLite path or http)")
    parser.add_argument("--model-name", required=True, help="registered model name")
    parser.add_argument("--version", default="", help="the version to roll back to; empty: the previous champion")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tfpipe.registry.mlflow_registry import ModelRegistry

    registry = ModelRegistry(args.tracking_uri)
    target = registry.rollback_target(args.model_name, args.version.strip() or None)
    champion = registry.find_baseline(args.model_name)
    return {"version": target.version, "model_uri": target.model_uri, "champion": champion.version}
