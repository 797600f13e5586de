"""Register: record the run's lineage in MLflow, and register a blessed model as the challenger.

Every run is recorded, blessed or not, so a refused candidate can be traced as well as a served one.
The MLflow run and the model version are keyed by the Airflow run (--run-key): a retried or cleared
task updates what an earlier attempt made instead of adding a second run or version. A registry that
cannot be reached fails with exit code 1, so Airflow retries.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from tfpipe import artifacts, code_version
from tfpipe.data.split import MANIFEST_FILE
from tfpipe.errors import DataError, StageError
from tfpipe.stages.transform import TRANSFORM_FILE

log = logging.getLogger(__name__)
EVALUATION_METRICS_FILE = "metrics.json"
BLESSING_FILE = "blessing.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", required=True, help="MLflow tracking and registry URI (SQLite path or http)")
    parser.add_argument("--artifact-root", help="where a new experiment keeps its files (folder or gs://)")
    parser.add_argument("--experiment", default="chicago_taxi", help="MLflow experiment of the pipeline's runs")
    parser.add_argument("--model-name", required=True, help="registered model name")
    parser.add_argument("--run-key", required=True, help="the Airflow run's key: one MLflow run and version per key")
    parser.add_argument("--model-uri", required=True, help="the exported SavedModel folder")
    parser.add_argument("--training-metrics-uri", required=True, help="metrics.json of the final training")
    parser.add_argument("--evaluation-uri", required=True, help="evaluation folder with metrics.json and blessing.json")
    parser.add_argument("--splits-uri", required=True, help="splits folder; its manifest has the span and fingerprint")
    parser.add_argument("--transform-uri", required=True, help="transform.json (or the folder holding it)")
    parser.add_argument("--schema-path", required=True, help="the schema the data was validated against")
    parser.add_argument("--config-path", required=True, help="the pipeline config file")
    parser.add_argument(
        "--code-version", help="version of the code that trained the model; default: $TFPIPE_CODE_VERSION or git"
    )
    parser.add_argument("--approval", default="", help="JSON: approver, approved_at and mode; empty if none")


def _read_json(uri: str, what: str) -> dict[str, Any]:
    if not artifacts.exists(uri):
        raise DataError(f"{what} not found: {uri}")
    try:
        value = artifacts.read_json(uri)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} at {uri} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise DataError(f"{what} at {uri} is not a JSON object")
    return value


def _approval(text: str) -> dict[str, Any] | None:
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StageError(f"--approval is not JSON: {exc}") from exc
    if value is not None and not isinstance(value, dict):
        raise StageError(f"--approval must be a JSON object, got {text!r}")
    return value or None


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here: MLflow takes seconds to import, and --help should not wait for it.
    from tfpipe.registry.mlflow_registry import CHALLENGER, SAVED_MODEL_FILE, ModelRegistry

    evaluation = _read_json(artifacts.join(args.evaluation_uri, EVALUATION_METRICS_FILE), "evaluation metrics")
    blessing_uri = artifacts.join(args.evaluation_uri, BLESSING_FILE)
    blessing = _read_json(blessing_uri, "blessing")
    training = _read_json(args.training_metrics_uri, "training metrics")
    manifest_uri = artifacts.join(args.splits_uri, MANIFEST_FILE)
    manifest = _read_json(manifest_uri, "split manifest")
    missing = [key for key in ("span", "fingerprint") if not manifest.get(key)]
    if missing:
        raise DataError(f"{manifest_uri} has no {' or '.join(missing)}")
    blessed = blessing.get("blessed")
    if not isinstance(blessed, bool):
        raise DataError(f"{blessing_uri}: 'blessed' must be true or false, not {blessed!r}")
    transform_uri = (
        args.transform_uri
        if args.transform_uri.endswith(".json")
        else artifacts.join(args.transform_uri, TRANSFORM_FILE)
    )
    if blessed and not artifacts.exists(artifacts.join(args.model_uri, SAVED_MODEL_FILE)):
        raise DataError(f"exported SavedModel not found: {args.model_uri} has no {SAVED_MODEL_FILE}")

    registry = ModelRegistry(args.tracking_uri, args.artifact_root, args.experiment)
    run_id = registry.record_run(
        run_key=args.run_key,
        data_span=manifest["span"],
        data_fingerprint=manifest["fingerprint"],
        code_version=args.code_version or code_version(),
        schema_path=args.schema_path,
        config_path=args.config_path,
        transform_uri=transform_uri,
        hyperparameters=training.get("hyperparameters") or {},
        training_metrics=training,
        evaluation=evaluation,
        blessing=blessing,
        approval=_approval(args.approval),
    )
    version = served_uri = None
    if blessed:
        version = registry.register_candidate(args.model_name, run_id, args.run_key, args.model_uri)
        # What is served is the registered copy, so the registry alone can bring it back.
        served_uri = registry.model_uri(args.model_name, version)
        log.info("%s version %s is the %s", args.model_name, version, CHALLENGER)
    else:
        reasons = "; ".join(str(reason) for reason in blessing.get("reasons") or []) or "no reason given"
        log.info("not blessed (%s): run %s recorded, no model version registered", reasons, run_id)
    return {
        "mlflow_run_id": run_id,
        "model_version": version,
        "model_uri": served_uri,
        "alias": CHALLENGER if version else None,
        "blessed": blessed,
        "tracking_uri": registry.tracking_uri,
    }
