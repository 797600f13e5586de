"""Evaluate: the candidate on the held-out split, by slice, against the champion; then the blessing.

Writes `<output>/tfma/` (TFMA's metrics and validation result), `metrics.json` (every slice's
metrics for the candidate and the champion), `blessing.json` (BLESSED or NOT_BLESSED with every
reason, the failures, the slices not judged, the baseline) and `report.html`. A NOT_BLESSED
candidate is a result, not a stage failure: the stage succeeds and the DAG skips deployment, so the
report and the reasons stay attached to a green task that says what happened.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from tfpipe import artifacts
from tfpipe.config import EvaluationConfig
from tfpipe.errors import DataError, TransientError

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
BLESSING_FILE = "blessing.json"
REPORT_FILE = "report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-uri", required=True, help="held-out data: a CSV file or the eval split folder")
    parser.add_argument("--candidate-uri", required=True, help="the candidate's exported SavedModel")
    parser.add_argument("--output-uri", required=True, help="evaluation folder of this run")
    parser.add_argument("--config", required=True, help="the pipeline's evaluation config as JSON")
    parser.add_argument("--tracking-uri", help="model registry (MLflow) to find the champion in")
    parser.add_argument("--baseline-uri", help="compare with this SavedModel instead of the registry's champion")


def _baseline(args: argparse.Namespace, config: EvaluationConfig) -> Any:
    from tfpipe.evaluation.gate import Baseline

    if args.baseline_uri:
        if not artifacts.exists(args.baseline_uri):
            return Baseline("missing", None, None, f"the baseline {args.baseline_uri} does not exist")
        return Baseline("champion", None, args.baseline_uri, "given")
    if not args.tracking_uri:
        return Baseline("first_model", reason="no model registry given: judged on value thresholds alone")
    from tfpipe.registry.mlflow_registry import ModelRegistry

    try:
        return ModelRegistry(args.tracking_uri).find_baseline(config.model_name)
    except TransientError:
        raise
    except Exception as exc:  # the registry is a service: unreachable now is worth a retry
        raise TransientError(f"the model registry at {args.tracking_uri} cannot be read: {exc}") from exc


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = EvaluationConfig.model_validate(json.loads(args.config))
    files = artifacts.csv_files(args.eval_uri, "eval_uri")
    if len(files) != 1:
        raise DataError(f"{args.eval_uri}: expected one CSV file of held-out data, found {len(files)}")
    if not artifacts.exists(args.candidate_uri):
        raise DataError(f"{args.candidate_uri}: the candidate model does not exist")
    from tfpipe.evaluation import gate, tfma_eval
    from tfpipe.evaluation.report import render_evaluation_report

    columns = tfma_eval.data_columns(files[0])
    problem = tfma_eval.serving_problem(args.candidate_uri, columns)
    if problem is not None:
        raise DataError(f"{args.candidate_uri}: the candidate cannot score the held-out data: {problem}")
    baseline = _baseline(args, config)
    if baseline.state == "champion" and (problem := tfma_eval.serving_problem(baseline.model_uri, columns)):
        # Not comparable is not blessed: the change thresholds cannot be judged.
        baseline = gate.Baseline(
            "missing",
            baseline.version,
            None,
            f"the champion {baseline.model_uri} cannot score the held-out data: {problem}",
        )
    log.info("baseline: %s%s", baseline.state, f" (version {baseline.version})" if baseline.version else "")
    companies = (
        tfma_eval.top_values(files[0], "company", config.slices.top_companies) if config.slices.top_companies else []
    )
    with artifacts.staged_output(args.output_uri) as staging:
        started = time.perf_counter()
        tfma_eval.run_evaluation(
            csv_path=files[0],
            candidate_uri=args.candidate_uri,
            baseline_uri=baseline.model_uri if baseline.state == "champion" else None,
            config=config,
            companies=companies,
            output_dir=staging / "tfma",
        )
        seconds = time.perf_counter() - started
        slices = tfma_eval.load_slice_metrics(staging / "tfma")
        failures, missing, no_thresholds = tfma_eval.load_validation(staging / "tfma")
        blessing = gate.decide(
            config=config,
            slices=slices,
            baseline=baseline,
            tfma_failures=failures,
            tfma_missing_slices=missing,
            tfma_missing_thresholds=no_thresholds,
        )
        metrics = {"operating_threshold": config.operating_threshold, "slices": slices, "seconds": round(seconds, 3)}
        artifacts.write_json(str(staging / METRICS_FILE), metrics)
        artifacts.write_json(str(staging / BLESSING_FILE), blessing)
        render_evaluation_report(
            staging / REPORT_FILE,
            title=f"Evaluation of {config.model_name}",
            metrics=metrics,
            blessing=blessing,
            thresholds=config.thresholds.model_dump(exclude_none=True),
            links={"TFMA output": "tfma/", "blessing": BLESSING_FILE, "metrics": METRICS_FILE},
        )
    overall = next((s for s in slices if not s["features"]), {"candidate": {}})
    log.info("TFMA evaluated %d slices in %.1f s", len(slices), seconds)
    for entry in blessing["not_judged"]:
        log.info("not judged: %s: %s", entry["slice"], entry["reason"])
    report_uri = artifacts.join(args.output_uri, REPORT_FILE)
    if blessing["blessed"]:
        log.info("BLESSED: every threshold holds (overall AUC %s)", overall["candidate"].get("auc"))
    else:
        log.warning("NOT BLESSED: %d reason(s); the run will not deploy this model", len(blessing["reasons"]))
        for reason in blessing["reasons"]:
            log.warning("  - %s", reason)
    log.info("report: %s", report_uri)
    return {
        "blessed": blessing["blessed"],
        "decision": blessing["decision"],
        "reasons": blessing["reasons"],
        "baseline_state": baseline.state,
        "auc": overall["candidate"].get("auc"),
        "evaluation_uri": args.output_uri,
        "report_uri": report_uri,
        "evaluation_seconds": round(seconds, 3),
    }
