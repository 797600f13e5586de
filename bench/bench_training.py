"""Training throughput on 1 and 2 workers, and a memory-capped training on data 3x larger than the cap.

1. Throughput: generated taxi-shaped trips over 2013-2016 are landed, split at span 2016-12 and
   their transform learned, as the DAG does; then the train stage (final mode, one epoch) runs with
   1 and with 2 workers on loopback, at the config's batch size and at 4096. Examples per second
   are the chief's (global examples / fit seconds, start-up excluded); wall seconds include start-up.
   Each figure is the median of --repeats runs.
2. Memory cap: a training split of --capped-gib GiB of CSV (default: 3.2 x the cap) is generated
   straight into the split's shard files, and the train stage runs with `training.memory_limit_mib`
   set to --cap-mib. The launcher stops any worker whose resident memory passes the cap, so "ok"
   means the whole epoch streamed through within it; the peak is the launcher's per-worker sample
   (every 0.25 s) and the kernel's high-water mark of the largest process (getrusage).

    python bench/bench_training.py [--rows N] [--repeats N] [--cap-mib MIB] [--capped-gib GIB] [--skip-capped]
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
PYTHON = sys.executable


def stage(*argv: str, timeout: float = 3600) -> dict:
    done = subprocess.run([PYTHON, "-m", "tfpipe", *argv], capture_output=True, text=True, timeout=timeout, env=_env())
    lines = [line for line in done.stdout.splitlines() if line.startswith(("TFPIPE_RESULT ", "TFPIPE_ERROR "))]
    if done.returncode != 0 or not lines or not lines[-1].startswith("TFPIPE_RESULT "):
        raise RuntimeError(f"stage {argv[0]} failed ({done.returncode}): {lines[-1:] or done.stderr[-2000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"}


def training_config(**overrides) -> str:
    from tfpipe.config import TrainingConfig, load_pipeline_config

    values = load_pipeline_config(CONFIG).training.model_dump()
    for key, value in overrides.items():
        if isinstance(value, dict):
            values[key].update(value)
        else:
            values[key] = value
    return TrainingConfig.model_validate(values).model_dump_json()


def prepare_window(work: Path, rows: int) -> tuple[Path, Path, int]:
    from tfpipe.config import load_pipeline_config

    generated = work / "generated.csv"
    stage("generate", "--sample-uri", str(SAMPLE), "--output-uri", str(generated), "--rows", str(rows))
    stage("land-spans", "--source-uri", str(generated), "--landing-uri", str(work / "landing"))
    stage("ingest", "--landing-uri", str(work / "landing"), "--span", "2016-12", "--output-uri", str(work / "examples"))
    split = stage(
        "split",
        "--examples-uri",
        str(work / "examples"),
        "--landing-uri",
        str(work / "landing"),
        "--span",
        "2016-12",
        "--first-span",
        "2013-01",
        "--config",
        load_pipeline_config(CONFIG).training.split.model_dump_json(),
        "--label",
        "big_tipper",
        "--timestamp-column",
        "trip_start_timestamp",
        "--output-uri",
        str(work / "splits"),
    )
    transform = stage("transform", "--splits-uri", str(work / "splits"), "--output-uri", str(work / "transform"))
    return work / "splits", Path(transform["transform_uri"]), split["train_rows"] + split["validation_rows"]


def train(work: Path, splits: Path, transform: Path, config: str, workers: int, name: str) -> dict:
    output = work / "models" / name
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    result = stage(
        "train",
        "--splits-uri",
        str(splits),
        "--transform-uri",
        str(transform),
        "--output-uri",
        str(output),
        "--config",
        config,
        "--workers",
        str(workers),
    )
    result["wall_seconds"] = time.perf_counter() - started
    shutil.rmtree(output, ignore_errors=True)
    return result


def throughput(work: Path, rows: int, repeats: int) -> dict:
    splits, transform, train_rows = prepare_window(work, rows)
    figures: dict = {"train_rows": train_rows}
    from tfpipe.config import load_pipeline_config

    config_batch = load_pipeline_config(CONFIG).training.hyperparameters.batch_size
    for batch in (config_batch, 4096):
        config = training_config(hyperparameters={"epochs": 1, "batch_size": batch})
        for workers in (1, 2):
            runs = [train(work, splits, transform, config, workers, f"w{workers}") for _ in range(repeats)]
            key = f"batch_{batch}_workers_{workers}"
            figures[key] = {
                "examples_per_second": round(statistics.median(r["examples_per_second"] for r in runs)),
                "wall_seconds": round(statistics.median(r["wall_seconds"] for r in runs), 1),
                "peak_rss_mib_per_worker": round(statistics.median(r["peak_rss_mib_per_worker"] for r in runs)),
                "eval_auc": round(statistics.median(r["eval_auc"] for r in runs), 4),
            }
            print(f"# {key}: {figures[key]}", file=sys.stderr, flush=True)
        one, two = figures[f"batch_{batch}_workers_1"], figures[f"batch_{batch}_workers_2"]
        figures[f"batch_{batch}_speedup_2_over_1"] = round(two["examples_per_second"] / one["examples_per_second"], 2)
    return figures


def capped(work: Path, transform: Path, cap_mib: int, gib: float) -> dict:
    """A train split of `gib` GiB generated straight into shard files, trained with a `cap_mib` memory limit."""
    splits = work / "capped-splits"
    shutil.rmtree(splits, ignore_errors=True)
    shards = 8
    bytes_per_row = 132  # generated rows average ~131.8 bytes
    rows_per_shard = int(gib * 2**30 / bytes_per_row / shards) + 1
    started = time.perf_counter()
    processes = []
    for index in range(shards):
        path = splits / "train" / f"part-{index:05d}-of-{shards:05d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = ["generate", "--sample-uri", str(SAMPLE), "--output-uri", str(path), "--rows", str(rows_per_shard)]
        processes.append(
            subprocess.Popen(
                [PYTHON, "-m", "tfpipe", *argv, "--seed", str(index)],
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        if len(processes) >= 2:  # two cores
            processes.pop(0).wait()
    for process in processes:
        process.wait()
    for name in ("validation", "eval"):
        (splits / name).mkdir(parents=True, exist_ok=True)
        stage(
            "generate",
            "--sample-uri",
            str(SAMPLE),
            "--output-uri",
            str(splits / name / "trips.csv"),
            "--rows",
            "20000",
            "--seed",
            "99",
        )
    generate_seconds = time.perf_counter() - started
    train_bytes = sum(path.stat().st_size for path in (splits / "train").glob("*.csv"))
    manifest = {
        "span": "2016-12",
        "trainable": True,
        "reason": "",
        "splits": {
            "train": {"rows": rows_per_shard * shards, "files": sorted(p.name for p in (splits / "train").iterdir())},
            "validation": {"rows": 20000, "files": ["trips.csv"]},
            "eval": {"rows": 20000, "files": ["trips.csv"]},
        },
        "fingerprint": "generated",
    }
    (splits / "manifest.json").write_text(json.dumps(manifest))
    config = training_config(memory_limit_mib=cap_mib, hyperparameters={"epochs": 1, "batch_size": 4096})
    try:
        result = train(work, splits, transform, config, 1, "capped")
        outcome = {"ok": True, "error": None}
    except RuntimeError as exc:
        result, outcome = {}, {"ok": False, "error": str(exc)[-500:]}
    shutil.rmtree(splits, ignore_errors=True)
    return {
        "cap_mib": cap_mib,
        "train_csv_gib": round(train_bytes / 2**30, 2),
        "data_over_cap": round(train_bytes / 2**20 / cap_mib, 2),
        "train_rows": rows_per_shard * shards,
        "generate_seconds": round(generate_seconds, 1),
        **outcome,
        "peak_rss_mib_sampled": round(result.get("peak_rss_mib_per_worker", 0)),
        "peak_rss_mib_getrusage": result.get("usage", {}).get("peak_rss_mib"),
        "examples_per_second": round(result.get("examples_per_second", 0)),
        "wall_seconds": round(result.get("wall_seconds", 0), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="generated trips for the throughput runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap-mib", type=int, default=1024)
    parser.add_argument("--capped-gib", type=float, help="train split size; default 3.2 x the cap")
    parser.add_argument("--skip-capped", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tfpipe-bench-training-"))
    try:
        figures = {"benchmark": "training", "rows_generated": args.rows, **throughput(work, args.rows, args.repeats)}
        if not args.skip_capped:
            gib = args.capped_gib or 3.2 * args.cap_mib / 1024
            figures["memory_capped"] = capped(work, Path(work / "transform" / "transform.json"), args.cap_mib, gib)
        print(json.dumps(figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    capped_ok = figures.get("memory_capped", {"ok": True})["ok"]
    return 0 if capped_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
