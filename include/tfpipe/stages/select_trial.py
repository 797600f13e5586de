"""Select trial: the tuning trial with the best validation metric, recorded for lineage and used by the final model.

Every trial must have finished: a missing or failed trial stops the selection (and the run), since the
best of an incomplete search is not the best of the search the config describes. Ties go to the
earlier trial, so a rerun picks the same one.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from tfpipe import artifacts
from tfpipe.errors import DataError
from tfpipe.stages.train import METRICS_FILE

log = logging.getLogger(__name__)
SELECTION_FILE = "selection.json"


def _uri_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise argparse.ArgumentTypeError(f"expected a JSON list of trial folders, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trial-uris", type=_uri_list, required=True, help="JSON list of each trial's output folder, in trial order"
    )
    parser.add_argument("--metric", default="auc", help="validation metric to maximize")
    parser.add_argument("--output-uri", required=True, help="selection folder of this run")


def run(args: argparse.Namespace) -> dict[str, Any]:
    key = f"validation_{args.metric}"
    trials = []
    for index, uri in enumerate(args.trial_uris):
        path = artifacts.join(uri, METRICS_FILE)
        if not artifacts.exists(path):
            raise DataError(f"trial {index} has no {METRICS_FILE} at {path}: it did not finish")
        metrics = artifacts.read_json(path)
        if key not in metrics:
            raise DataError(f"trial {index} ({path}) has no {key!r}; it has {sorted(metrics)}")
        trials.append({"trial": index, "uri": uri, key: metrics[key], "hyperparameters": metrics["hyperparameters"]})
        log.info("trial %d: %s %.4f with %s", index, key, metrics[key], json.dumps(metrics["hyperparameters"]))
    best = max(trials, key=lambda trial: (trial[key], -trial["trial"]))
    selection = {"metric": key, "best": best, "trials": trials}
    with artifacts.staged_output(args.output_uri) as staging:
        artifacts.write_json(str(staging / SELECTION_FILE), selection)
    log.info("best: trial %d, %s %.4f", best["trial"], key, best[key])
    return {
        "best_trial": best["trial"],
        key: best[key],
        "hyperparameters": json.dumps(best["hyperparameters"], sort_keys=True),
        "selection_uri": artifacts.join(args.output_uri, SELECTION_FILE),
    }
