"""Transform: learn the preprocessing constants from the training window, once per training run.

Normalization means and variances, vocabularies and location bucket boundaries are computed from the
train and validation splits (the final model's training data; never the evaluation split) and saved
as `transform.json`, versioned by its own fingerprint and the fingerprint of the data it came from.
Every model of the run (each tuning trial, each worker) is built from this file, and the exported
SavedModel carries the constants inside its serving signature, which takes raw trips: the serving
side never reimplements a transform.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from typing import Any

from tfpipe import artifacts
from tfpipe.data.split import MANIFEST_FILE, split_files

log = logging.getLogger(__name__)
TRANSFORM_FILE = "transform.json"
LEARNED_FROM = ("train", "validation")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splits-uri", required=True, help="splits folder written by the split stage")
    parser.add_argument("--output-uri", required=True, help="transform folder of this run")


def load_transform(uri: str) -> dict[str, Any]:
    """The transform saved by this stage (a transform.json file or the folder holding it)."""
    path = uri if uri.endswith(".json") else artifacts.join(uri, TRANSFORM_FILE)
    return artifacts.read_json(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tfpipe.training import model as m

    manifest = artifacts.read_json(artifacts.join(args.splits_uri, MANIFEST_FILE))
    files, rows = split_files(args.splits_uri, LEARNED_FROM)
    columns = m.feature_columns()
    transform = m.analyze(m.make_dataset(files, 4096, columns=columns, with_label=False), m.DEFAULT_DESIGN)
    body = json.dumps(transform, sort_keys=True, separators=(",", ":"))
    transform["fingerprint"] = hashlib.sha256(body.encode()).hexdigest()
    transform["learned_from"] = {
        "splits": list(LEARNED_FROM),
        "spans": [manifest["splits"][LEARNED_FROM[0]]["spans"][0], manifest["splits"][LEARNED_FROM[-1]]["spans"][1]],
        "rows": rows,
        "data_fingerprint": manifest["fingerprint"],
    }
    with artifacts.staged_output(args.output_uri) as staging:
        artifacts.write_json(str(staging / TRANSFORM_FILE), transform)
    for name, entry in transform["features"].items():
        if "vocabulary" in entry:
            log.info("%s: vocabulary of %d", name, len(entry["vocabulary"]))
        elif "boundaries" in entry:
            log.info("%s: mean %.4f, %d bucket boundaries", name, entry["mean"][0], len(entry["boundaries"]))
        else:
            log.info("%s: mean %.4f, variance %.4f", name, entry["mean"][0], entry["variance"][0])
    log.info("transform %s learned from %d rows", transform["fingerprint"][:12], rows)
    return {
        "transform_uri": artifacts.join(args.output_uri, TRANSFORM_FILE),
        "fingerprint": transform["fingerprint"],
        "rows": rows,
    }
