"""TFMA evaluation time with the configured slices: our settings against TFMA's defaults, same data, same metrics.

A model is trained once on the sample's 2013-2015 spans (the pipeline's own stages). It is then
evaluated with the config's slices and metrics, on the whole 15,002-row sample and on --rows
generated trips, two ways:

- "tfpipe": what the evaluate stage runs: a fixed inference batch (evaluation.batch_size), the model
  type and signature named, no default metrics, our metric classes (TFMA's, reading a binary
  classifier's label and prediction directly) and our `invalid_predictions` check, the batches
  spread over the config's two Beam worker processes, or one process below
  evaluation.in_process_below_rows;
- "tfma_defaults": the same EvalConfig and data with TFMA's defaults left in place: inference batches
  grown adaptively from one row (what TFXIO sources do when no batch size is given), model type
  detected by loading the model, default metrics included, TFMA's own metric classes, Beam's default
  DirectRunner.

Both must give the same metric values (max absolute difference reported; metrics only TFMA's default
adds, and our check, which TFMA has no class for, are ignored). Times are medians of --repeats runs,
each in a fresh process as a task runs it.

    python bench/bench_evaluation.py [--rows N] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIME = "ml"
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "chicago_taxi" / "taxi_big_tipper.csv"
CONFIG = ROOT / "dags" / "configs" / "chicago_taxi.yaml"

# One evaluation, run in its own process: python bench_evaluation.py --one MODE CSV MODEL OUTPUT
ONE = "--one"


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"}


def stage(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "tfpipe", *argv], capture_output=True, text=True, env=_env())
    line = next((x for x in done.stdout.splitlines() if x.startswith("TFPIPE_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"stage {argv[0]} failed: {done.stdout[-1000:]}{done.stderr[-2000:]}")
    return json.loads(line.split(" ", 1)[1])


def train_model(work: Path) -> str:
    from tfpipe.config import load_pipeline_config

    config = load_pipeline_config(CONFIG)
    stage("land-spans", "--source-uri", str(SAMPLE), "--landing-uri", str(work / "landing"))
    stage("ingest", "--landing-uri", str(work / "landing"), "--span", "2016-12", "--output-uri", str(work / "examples"))
    stage(
        "split",
        *("--examples-uri", str(work / "examples"), "--landing-uri", str(work / "landing")),
        *("--span", "2016-12", "--first-span", "2013-01", "--config", config.training.split.model_dump_json()),
        *("--label", "big_tipper", "--timestamp-column", "trip_start_timestamp", "--output-uri", str(work / "splits")),
    )
    stage("transform", "--splits-uri", str(work / "splits"), "--output-uri", str(work / "transform"))
    result = stage(
        "train",
        *("--splits-uri", str(work / "splits"), "--transform-uri", str(work / "transform" / "transform.json")),
        *("--output-uri", str(work / "model"), "--config", config.training.model_dump_json(), "--workers", "1"),
    )
    return result["model_uri"]


def evaluate_once(mode: str, csv_path: str, model_uri: str, output: str) -> None:
    """Runs in a fresh process; prints {"seconds": ...} on its last line."""
    import apache_beam as beam
    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions

    from tfpipe.config import load_pipeline_config
    from tfpipe.evaluation import tfma_eval

    config = load_pipeline_config(CONFIG).evaluation
    companies = tfma_eval.top_values(csv_path, "company", config.slices.top_companies)
    started = time.perf_counter()
    if mode == "tfpipe":
        tfma_eval.run_evaluation(
            csv_path=csv_path,
            candidate_uri=model_uri,
            baseline_uri=None,
            config=config,
            companies=companies,
            output_dir=Path(output),
        )
    else:
        cfg = tfma_eval.eval_config(config, companies, with_baseline=False)
        for spec in cfg.model_specs:
            spec.ClearField("model_type")  # TFMA detects it by loading the model
        metrics = cfg.metrics_specs[0].metrics
        checks = {class_name for class_name, _ in tfma_eval.CHECKS.values()}
        kept = [metric for metric in metrics if metric.class_name not in checks]  # TFMA has none
        del metrics[:]
        metrics.extend(kept)
        for metric in metrics:
            if metric.module:  # TFMA's own class for each of ours
                metric.class_name, metric.module = tfma_eval.TFMA_CLASSES[metric.class_name], ""
        cfg.options.ClearField("include_default_metrics")
        model = tfma.default_eval_shared_model(eval_saved_model_path=model_uri, eval_config=cfg, rubber_stamp=True)
        with beam.Pipeline(options=PipelineOptions([])) as pipeline:
            _ = (
                pipeline
                | beam.Create([csv_path])
                | "OneRowBatches" >> beam.FlatMap(tfma_eval.record_batches, 1)
                # What a TFXIO source does without a batch size: batches grown from 1 row, up to 1000.
                | beam.BatchElements(min_batch_size=1, max_batch_size=1000)
                | beam.Map(_one_record_batch)
                | tfma.ExtractEvaluateAndWriteResults(eval_shared_model=model, eval_config=cfg, output_path=output)
            )
    print(json.dumps({"seconds": time.perf_counter() - started}))


def _one_record_batch(batches: list) -> object:
    import pyarrow as pa

    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def timed(mode: str, csv_path: str, model_uri: str, output: Path) -> float:
    shutil.rmtree(output, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, __file__, ONE, mode, csv_path, model_uri, str(output)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} evaluation failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def metric_difference(a: Path, b: Path) -> tuple[float, int]:
    from tfpipe.evaluation import tfma_eval

    left = {s["slice"]: s["candidate"] for s in tfma_eval.load_slice_metrics(a)}
    right = {s["slice"]: s["candidate"] for s in tfma_eval.load_slice_metrics(b)}
    if set(left) != set(right):
        raise RuntimeError(f"the two runs computed different slices: {sorted(set(left) ^ set(right))[:5]}")
    worst = 0.0
    for name, metrics in left.items():
        if set(metrics) - set(right[name]) != set(tfma_eval.CHECKS):
            raise RuntimeError(f"{name}: metrics {sorted(metrics)} against {sorted(right[name])}")
        for metric, value in metrics.items():
            if metric in tfma_eval.CHECKS:
                continue  # ours alone: TFMA has no such metric
            other = right[name].get(metric)
            if value is None or other is None:
                if value != other:
                    raise RuntimeError(f"{name} {metric}: {value} against {other}")
                continue
            worst = max(worst, abs(value - other))
    return worst, len(left)


def compare(work: Path, name: str, csv_path: str, model_uri: str, repeats: int) -> dict:
    figures: dict = {}
    for mode in ("tfpipe", "tfma_defaults"):
        seconds = [timed(mode, csv_path, model_uri, work / f"{name}-{mode}") for _ in range(repeats)]
        figures[f"{mode}_seconds"] = round(statistics.median(seconds), 1)
        print(f"# {name} {mode}: {seconds}", file=sys.stderr, flush=True)
    figures["speedup"] = round(figures["tfma_defaults_seconds"] / figures["tfpipe_seconds"], 2)
    figures["max_metric_difference"], figures["slices"] = metric_difference(
        work / f"{name}-tfpipe", work / f"{name}-tfma_defaults"
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tfpipe-bench-evaluation-"))
    try:
        model_uri = train_model(work)
        figures = {"benchmark": "evaluation", "sample": compare(work, "sample", str(SAMPLE), model_uri, args.repeats)}
        generated = work / "generated.csv"
        stage("generate", "--sample-uri", str(SAMPLE), "--output-uri", str(generated), "--rows", str(args.rows))
        figures[f"generated_{args.rows}"] = compare(
            work, "generated", str(generated), model_uri, max(1, args.repeats - 2)
        )
        print(json.dumps(figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == ONE:
        evaluate_once(*sys.argv[2:])
        raise SystemExit(0)
    raise SystemExit(main())
