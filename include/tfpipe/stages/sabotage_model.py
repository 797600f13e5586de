"""Sabotage-model: write a broken copy of a model (same `serving_default` signature) for drills and tests.

    python -m tfpipe sabotage-model --model-uri SRC --mode constant|error --output-uri DST [--value 0.5]

`constant` answers the same probability for every trip; `error` fails every call. Load the result into
the model server as a canary to rehearse a rollout that must be stopped (docs/runbook.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from tfpipe import artifacts
from tfpipe.errors import DataError, StageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-uri", required=True, help="the SavedModel whose signature the copy keeps")
    parser.add_argument("--mode", required=True, choices=["constant", "error"], help="how the copy is broken")
    parser.add_argument("--output-uri", required=True, help="where the sabotaged SavedModel is written")
    parser.add_argument("--value", type=float, default=0.5, help="the probability a `constant` model answers")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not artifacts.exists(artifacts.join(args.model_uri, "saved_model.pb")):
        raise DataError(f"{args.model_uri} is not a SavedModel (no saved_model.pb in it)")
    if not 0.0 <= args.value <= 1.0:
        raise StageError(f"--value must be a probability in [0, 1], got {args.value}")
    from tfpipe.serving.sabotage import sabotage

    try:
        signature = sabotage(args.model_uri, args.output_uri, args.mode, args.value)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return {"model_uri": args.output_uri, "source_uri": args.model_uri, "mode": args.mode, **signature}
