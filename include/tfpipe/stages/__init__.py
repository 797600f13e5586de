"""The stage protocol: one command line for every ML stage, wherever it runs.

    python -m tfpipe <stage> --input-uri ... --output-uri ... [--result-file URI]

A stage logs progress to stderr as it goes, and prints exactly one result line to stdout,
`TFPIPE_RESULT {json}`, with the URIs it wrote and a few small figures. On failure it prints
`TFPIPE_ERROR {json}` naming the problem and exits non-zero. The Airflow side turns the result
into XCom and the error into the task's failure message; Kubernetes pods and Vertex AI jobs get
the same result through `--result-file`. Only the chosen stage's module is imported, so a stage
that needs no TensorFlow starts in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import resource
import sys
import time
import warnings
from typing import Any

from tfpipe import artifacts
from tfpipe.errors import TfpipeError

RESULT_PREFIX = "TFPIPE_RESULT "
ERROR_PREFIX = "TFPIPE_ERROR "

# stage name -> (module, one-line description). Modules are imported only when chosen.
STAGES: dict[str, tuple[str, str]] = {
    "land-spans": ("tfpipe.data.landing", "split a trips file into monthly spans in the landing area"),
    "generate": ("tfpipe.data.generate", "generate taxi-shaped data of any size from the sample"),
    "ingest": ("tfpipe.stages.ingest", "collect one span (or a given file/folder) into the run's examples"),
    "expectations": ("tfpipe.stages.expectations", "run the Great Expectations suite of the validation gate"),
    "propose-schema": (
        "tfpipe.stages.propose_schema",
        "propose a schema update from data for review; never writes the schema",
    ),
    "validate": (
        "tfpipe.stages.validate",
        "check examples: schema, drift, skew, Great Expectations; fail on errors",
    ),
    "split": ("tfpipe.data.split", "split the training window by time into train, validation and eval"),
    "transform": ("tfpipe.stages.transform", "learn the preprocessing constants from the training splits"),
    "train": ("tfpipe.stages.train", "train a tuning trial or the final model, on one or more workers"),
    "select-trial": ("tfpipe.stages.select_trial", "pick the tuning trial with the best validation metric"),
    "evaluate": ("tfpipe.stages.evaluate", "sliced TFMA evaluation against the champion and the blessing gate"),
    "register": ("tfpipe.stages.register", "record lineage in MLflow and register a blessed model as challenger"),
    "serve": ("tfpipe.stages.serve", "run the model server (TF Serving's REST API, canary split) until stopped"),
    "sabotage-model": (
        "tfpipe.stages.sabotage_model",
        "write a broken copy of a model (constant or failing) for canary drills",
    ),
    "promote": ("tfpipe.stages.promote", "make the version that serves all traffic the registry's champion"),
    "rollback-target": (
        "tfpipe.stages.rollback_target",
        "the version a rollback moves to (default: previous champion)",
    ),
    "record-rollback": ("tfpipe.stages.record_rollback", "record a rollback (who, when, why) and move the champion"),
    "monitor": (
        "tfpipe.stages.monitor",
        "judge one window of served traffic: skew, drift, data quality, latency, outages, quality; alerts",
    ),
}

log = logging.getLogger("tfpipe.stage")


def _usage() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_seconds": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mib": round(max(own.ru_maxrss, children.ru_maxrss) / 1024, 1),
    }


def _parser(stage: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfpipe",
        description="Run one tfpipe ML stage.",
        epilog="stages:\n" + "\n".join(f"  {name:<15} {text}" for name, (_, text) in STAGES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module_name, text) in STAGES.items():
        sub = subparsers.add_parser(name, help=text, description=text)
        sub.add_argument("--result-file", help="also write the JSON result to this URI")
        if name == stage:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def emit(prefix: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(prefix + json.dumps(payload, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Under Airflow the task log adds its own timestamps (TFPIPE_LOG_PLAIN=1); elsewhere we add ours.
    plain = os.environ.get("TFPIPE_LOG_PLAIN") == "1"
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=("" if plain else "%(asctime)s ") + "%(levelname)s [%(name)s] %(message)s",
        force=True,
    )
    # Library chatter that says nothing about our data; warnings and errors still come through.
    for chatty in ("apache_beam", "great_expectations", "absl", "tensorflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.api_core.*")
    stage = argv[0] if argv and argv[0] in STAGES else None
    args = _parser(stage).parse_args(argv)
    module = importlib.import_module(STAGES[args.stage][0])
    started = time.perf_counter()
    log.info("stage %s starting", args.stage)
    try:
        result = dict(module.run(args))
        result["usage"] = {"wall_seconds": round(time.perf_counter() - started, 3), **_usage()}
        if args.result_file:
            artifacts.write_json(args.result_file, result)
    except TfpipeError as exc:
        log.error("%s", exc)
        payload = {"stage": args.stage, "error": type(exc).__name__, "message": str(exc), "details": exc.details}
        emit(ERROR_PREFIX, payload)
        return exc.exit_code
    except Exception as exc:  # an unexpected bug: keep the traceback for whoever debugs it
        log.exception("stage %s crashed", args.stage)
        message = f"{type(exc).__name__}: {exc}"
        emit(ERROR_PREFIX, {"stage": args.stage, "error": type(exc).__name__, "message": message})
        return 1
    log.info("stage %s finished in %.1f s", args.stage, result["usage"]["wall_seconds"])
    emit(RESULT_PREFIX, result)
    return 0
