"""Split by time: train on earlier spans, hold out the latest ones, the way the model will be used.

The run's span and the spans before it (from the landing area; the run's own span from its ingested
examples, which may be data a person named) are split by each row's timestamp:

    ... train ... | validation (validation_spans) | eval (holdout_spans, ending at the run's span)

Tuning trials learn from `train` and are scored on `validation`; the final model learns from both;
`eval` is never learned from and is what evaluation judges. `train` and `validation` are written as
`shards` files each, rows dealt round-robin, so each training worker reads whole files of its own.
Rows outside the window or without a readable timestamp are counted in the manifest, never used.
Streaming, one pass over each source, constant memory.

A run whose span has too little history before it (the first spans of a backfill), or whose window
has a split without rows, is not an error: the manifest and result say `trainable: false` and why,
the run still validates its span, and the DAG skips training.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
from typing import Any

from tfpipe import artifacts
from tfpipe.config import SplitConfig
from tfpipe.data.landing import DATA_FILE, read_header
from tfpipe.data.spans import parse_span, shift_span, span_folder, span_of_timestamp, spans_between
from tfpipe.errors import DataError, StageError

log = logging.getLogger(__name__)
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "validation", "eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples-uri", required=True, help="the run's examples folder written by ingest")
    parser.add_argument("--landing-uri", required=True, help="landing area holding the earlier spans")
    parser.add_argument("--span", required=True, help="the run's span (YYYY-MM): the last span of the window")
    parser.add_argument("--first-span", required=True, help="first span with data (YYYY-MM)")
    parser.add_argument("--config", required=True, help="the pipeline's training.split config as JSON")
    parser.add_argument("--label", required=True, help="label column, for the positive rate of each split")
    parser.add_argument("--timestamp-column", required=True)
    parser.add_argument("--output-uri", required=True, help="splits folder of this run")


def split_spans(span: str, first_span: str, config: SplitConfig) -> dict[str, list[str]]:
    """The spans of each split, oldest first."""
    eval_first = shift_span(span, 1 - config.holdout_spans)
    validation_first = shift_span(eval_first, -config.validation_spans)
    window_first = first_span
    if config.window_spans is not None:
        window_first = max(first_span, shift_span(span, 1 - config.window_spans))
    return {
        "train": spans_between(window_first, shift_span(validation_first, -1)),
        "validation": spans_between(max(window_first, validation_first), shift_span(eval_first, -1)),
        "eval": spans_between(max(window_first, eval_first), span),
    }


def split_files(splits_uri: str, names: tuple[str, ...]) -> tuple[list[str], int]:
    """The CSV files and row count of the named splits."""
    manifest = artifacts.read_json(artifacts.join(splits_uri, MANIFEST_FILE))
    files = [artifacts.join(splits_uri, name, file) for name in names for file in manifest["splits"][name]["files"]]
    return files, sum(manifest["splits"][name]["rows"] for name in names)


def _sources(args: argparse.Namespace, window: list[str]) -> tuple[list[str], list[str]]:
    """CSV files to read (earlier spans from landing, then the run's examples) and spans missing from landing."""
    sources, missing = [], []
    for span in window[:-1]:
        folder = artifacts.join(args.landing_uri, span_folder(span))
        files = artifacts.list_files(folder, ".csv") if artifacts.is_dir(folder) else []
        if files:
            sources += files
        else:
            missing.append(span)
    return [*sources, artifacts.join(args.examples_uri, DATA_FILE)], missing


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = SplitConfig.model_validate(json.loads(args.config))
    try:
        parse_span(args.span)
        parse_span(args.first_span)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    spans = split_spans(args.span, args.first_span, config)
    short = [name for name in SPLITS if not spans[name]]
    if short:
        reason = (
            f"not enough history to train at span {args.span}: the first span with data is {args.first_span}, "
            f"and {config.holdout_spans} holdout + {config.validation_spans} validation spans are held back, "
            f"which leaves no spans for the {' and '.join(short)} split"
        )
        return _not_trainable(args, spans, reason)
    split_of = {span: name for name, members in spans.items() for span in members}
    window = [span for name in SPLITS for span in spans[name]]
    sources, missing = _sources(args, window)
    if missing:
        log.warning("%d span(s) of the window have not landed and are skipped: %s", len(missing), ", ".join(missing))

    rows = dict.fromkeys(SPLITS, 0)
    positives = dict.fromkeys(SPLITS, 0)
    dropped = {"outside_window": 0, "no_timestamp": 0}
    header: list[str] | None = None
    digest = hashlib.sha256()
    with artifacts.staged_output(args.output_uri) as staging, contextlib.ExitStack() as files:
        writers: dict[str, list[Any]] = {}
        for name in SPLITS:
            (staging / name).mkdir()
            count = 1 if name == "eval" else config.shards
            paths = [DATA_FILE] if count == 1 else [f"part-{i:05d}-of-{count:05d}.csv" for i in range(count)]
            writers[name] = [
                csv.writer(files.enter_context(open(staging / name / path, "w", newline="", encoding="utf-8")))
                for path in paths
            ]
        for source in sources:
            with artifacts.open_binary(source) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                reader = csv.reader(text)
                this_header = read_header(reader, source, args.timestamp_column)
                if header is None:
                    header = this_header
                    if args.label not in header:
                        raise DataError(f"{source}: no label column {args.label!r} in the header {header}")
                    for name in SPLITS:
                        for writer in writers[name]:
                            writer.writerow(header)
                elif this_header != header:
                    raise DataError(f"{source}: header {this_header} differs from the first file's {header}")
                digest.update(source.encode())
                time_at, label_at = header.index(args.timestamp_column), header.index(args.label)
                for row in reader:
                    try:
                        span = span_of_timestamp(float(row[time_at]))
                    except (ValueError, OverflowError, OSError, IndexError):
                        dropped["no_timestamp"] += 1
                        continue
                    name = split_of.get(span)
                    if name is None:
                        dropped["outside_window"] += 1
                        continue
                    shards = writers[name]
                    shards[rows[name] % len(shards)].writerow(row)
                    rows[name] += 1
                    positives[name] += row[label_at] == "1"
                    digest.update(",".join(row).encode())
        empty = [name for name in SPLITS if rows[name] == 0]
        ranges = "; ".join(f"{name} {spans[name][0]}..{spans[name][-1]}" for name in empty)
        manifest = {
            "span": args.span,
            "trainable": not empty,
            "reason": f"no rows fall in the {' and '.join(empty)} split ({ranges})" if empty else "",
            "splits": {
                name: {
                    "spans": [spans[name][0], spans[name][-1]],
                    "rows": rows[name],
                    "positive_rate": round(positives[name] / rows[name], 6) if rows[name] else None,
                    "files": sorted(path.name for path in (staging / name).iterdir()),
                }
                for name in SPLITS
            },
            "missing_spans": missing,
            "dropped_rows": dropped,
            "sources": sources,
            "fingerprint": digest.hexdigest(),
        }
        artifacts.write_json(str(staging / MANIFEST_FILE), manifest)
    for name in SPLITS:
        info = manifest["splits"][name]
        rate = f"{100 * info['positive_rate']:.1f}% positive" if info["rows"] else "EMPTY"
        log.info("%-10s %s..%s: %d rows, %s", name, *info["spans"], info["rows"], rate)
    if any(dropped.values()):
        log.warning("rows not used: %d outside the window, %d without a readable timestamp", *dropped.values())
    if empty:
        log.warning("%s: nothing is trained on this run", manifest["reason"])
    return {
        "trainable": not empty,
        "reason": manifest["reason"],
        "splits_uri": args.output_uri,
        **{f"{name}_uri": artifacts.join(args.output_uri, name) for name in SPLITS},
        **{f"{name}_rows": rows[name] for name in SPLITS},
        "fingerprint": manifest["fingerprint"],
    }


def _not_trainable(args: argparse.Namespace, spans: dict[str, list[str]], reason: str) -> dict[str, Any]:
    """Record why this run trains nothing (its span is still checked by validation)."""
    log.warning("%s: nothing is trained on this run", reason)
    manifest = {
        "span": args.span,
        "trainable": False,
        "reason": reason,
        "splits": {name: {"spans": [spans[name][0], spans[name][-1]] if spans[name] else []} for name in SPLITS},
    }
    with artifacts.staged_output(args.output_uri) as staging:
        artifacts.write_json(str(staging / MANIFEST_FILE), manifest)
    return {"trainable": False, "reason": reason, "splits_uri": args.output_uri}
