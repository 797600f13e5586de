"""The monitoring DAG over a day of logged traffic at 200 requests/s (17.28 million lines, ~9.6 GB).

A day of request log lines is written in the server's format (tfpipe.serving.request_log), one rotated
file per hour, from real trips of the sample with the predictions of a small model trained on them
(90% version 1 stable, 10% version 2 canary). Then, each timed in a fresh process:

- `stage_day`: the `monitor` stage over the whole day (one 24-hour window), as the DAG's task runs it;
- `stage_hour`: the same stage over the day's last hour (what the hourly schedule does), with the log
  holding the whole day;
- `dag_day`: `airflow dags test chicago_taxi_monitoring` over the whole day (window params), every task
  (probe, monitor, alerts, retraining, new spans) included, in a scratch AIRFLOW_HOME. No model server runs,
  so the run ends with an outage alert, as it should.

Target: under 60 s for the DAG run. Lines read beyond `monitoring.sample_mib` are sampled (the result says
which share was read). The log is deleted afterwards.

    python bench/bench_monitoring.py [--hours 24] [--rate 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIME = "ml"
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "chicago_taxi" / "taxi_big_tipper.csv"
CONFIG = ROOT / "dags" / "configs" / "chicago_taxi.yaml"
AIRFLOW = ROOT / ".venv" / "bin" / "airflow"
DAY = dt.datetime(2026, 5, 9, tzinfo=dt.UTC)
TARGET_SECONDS = 60.0


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1", **extra}


def train_model(work: Path) -> tuple[str, Path, Path]:
    """A small model on the sample's first 10,000 trips; the next 2,000 are its evaluation split."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    sys.path.insert(0, str(ROOT))
    from tests.conftest import write_sample_rows
    from tfpipe.training import model as m

    train = write_sample_rows(work / "train.csv", 10_000)
    evaluation = write_sample_rows(work / "eval.csv", 2_000, start=10_000)
    design = m.Design(hidden=(8,), dropout=0.0)
    m.keras.utils.set_random_seed(0)
    columns = m.feature_columns(design)
    transform = m.analyze(m.make_dataset(train, 512, columns=columns), design)
    model = m.build_model(transform, design)
    model.fit(m.make_dataset(train, 256, shuffle=True, seed=0, columns=columns), epochs=1, verbose=0)
    return m.export_serving_model(model, work / "model"), train, evaluation


def bodies(model_uri: str) -> list[bytes]:
    """The part of a log line after its ts, for each trip of the sample, as the server writes it."""
    import numpy as np
    import orjson
    import pandas as pd
    import tensorflow as tf

    from tfpipe.serving.request_log import hash_key
    from tfpipe.training import model as m

    frame = pd.read_csv(SAMPLE, dtype={"company": str, "payment_type": str})
    signature = tf.saved_model.load(model_uri).signatures["serving_default"]
    inputs = list(signature.structured_input_signature[1])
    features = m.features_from_frame(frame, inputs)
    predictions = signature(**{k: tf.constant(v) for k, v in features.items()})["probabilities"].numpy().reshape(-1)
    rows = [
        dict(zip(inputs, values, strict=True)) for values in zip(*(features[k].tolist() for k in inputs), strict=True)
    ]
    rng = random.Random(0)
    out = []
    for index, row in enumerate(rows):
        instance = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        canary = rng.random() < 0.1
        document = {
            "model": "big_tipper",
            "version": "2" if canary else "1",
            "role": "canary" if canary else "stable",
            "key": hash_key(f"user-{rng.randrange(1000)}"),
            "instances": [instance],
            "predictions": [float(predictions[index])],
            "latency_ms": round(rng.lognormvariate(0.3, 0.4), 3),
            "status": 200,
        }
        out.append(orjson.dumps(document)[1:])  # without the opening brace: the ts goes first
    return out


def write_day(folder: Path, lines_bodies: list[bytes], hours: int, rate: float) -> tuple[int, int]:
    """One file per hour (requests.jsonl.<hours-1> oldest ... requests.jsonl the last hour)."""
    per_hour = int(rate * 3600)
    tails = []
    for i in range(per_hour):
        seconds, fraction = divmod(i, int(rate))
        minute, second = divmod(seconds, 60)
        micro = int(fraction * 1_000_000 / rate)
        stamp = f"{minute:02d}:{second:02d}" + (f".{micro:06d}" if micro else "") + "+00:00"
        tails.append(stamp.encode() + b'",' + lines_bodies[i % len(lines_bodies)])
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for hour in range(hours):
        moment = DAY + dt.timedelta(hours=hour)
        prefix = b'{"ts":"' + moment.strftime("%Y-%m-%dT%H:").encode()
        data = prefix + (b"\n" + prefix).join(tails) + b"\n"
        index = hours - 1 - hour
        name = "requests.jsonl" if index == 0 else f"requests.jsonl.{index}"
        (folder / name).write_bytes(data)
        total += len(data)
    return per_hour * hours, total


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def stage_result(stdout: str) -> dict:
    line = next(x for x in stdout.splitlines() if x.startswith("TFPIPE_RESULT "))
    return json.loads(line.split(" ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--keep", help="write the log here and keep it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tfpipe-bench-monitoring-"))
    log_dir = Path(args.keep) if args.keep else work / "requests"
    try:
        model_uri, train, evaluation = train_model(work)
        started = time.perf_counter()
        lines, size = write_day(log_dir, bodies(model_uri), args.hours, args.rate)
        print(f"# wrote {lines:,} lines, {size / 1e9:.1f} GB in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        baselines = {"*": {"training_data_uri": str(train), "eval_uri": str(evaluation), "model_uri": model_uri}}
        from tfpipe.config import load_pipeline_config

        env = _env(
            TFPIPE_REQUEST_LOG_DIR=str(log_dir),
            TFPIPE_MONITORING_STATE=str(work / "state"),
            TFPIPE_ARTIFACT_ROOT=str(work / "artifacts"),
            MLFLOW_TRACKING_URI=str(work / "no-registry" / "mlflow.db"),
            TFPIPE_QUOTA_METRICS=str(work / "no-quota.prom"),
        )
        os.environ.update(
            {
                k: env[k]
                for k in (
                    "TFPIPE_REQUEST_LOG_DIR",
                    "TFPIPE_MONITORING_STATE",
                    "TFPIPE_ARTIFACT_ROOT",
                    "MLFLOW_TRACKING_URI",
                    "TFPIPE_QUOTA_METRICS",
                )
            }
        )
        config = load_pipeline_config(CONFIG)
        end = DAY + dt.timedelta(hours=args.hours)
        # Warm the baseline cache once (a new version costs this once, then it is cached).
        figures: dict = {"lines": lines, "gigabytes": round(size / 1e9, 2), "rate": args.rate, "hours": args.hours}

        def stage(name: str, start: dt.datetime, stop: dt.datetime) -> None:
            argv = [
                sys.executable,
                "-m",
                "tfpipe",
                "monitor",
                "--config",
                config.model_dump_json(),
                "--window-start",
                start.isoformat(),
                "--window-end",
                stop.isoformat(),
                "--output-uri",
                str(work / "runs" / name),
                "--baselines",
                json.dumps(baselines),
            ]
            seconds, stdout = timed(argv, env)
            result = stage_result(stdout)
            figures[f"{name}_seconds"] = round(seconds, 1)
            figures[f"{name}_sample_ratio"] = result["sample_ratio"]
            figures[f"{name}_alerts"] = sorted(f"{a['kind']}:{a['feature'] or ''}" for a in result["alerts"])
            print(
                f"# {name}: {seconds:.1f} s, read {result['sample_ratio']:.1%}, alerts {result['alert_count']}",
                file=sys.stderr,
            )

        stage("baseline_warmup", end - dt.timedelta(minutes=5), end)
        stage("stage_day", DAY, end)
        stage("stage_hour", end - dt.timedelta(hours=1), end)
        if AIRFLOW.exists():
            home = work / "airflow"
            airflow_env = {
                **env,
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "TFPIPE_ML_PYTHON": sys.executable,
                "TFPIPE_PROJECT_ROOT": str(ROOT),
                "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
            }
            subprocess.run([str(AIRFLOW), "db", "migrate"], capture_output=True, env=airflow_env, check=True)
            conf = {"window_start": DAY.isoformat(), "window_end": end.isoformat(), "baselines": baselines}
            seconds, _ = timed(
                [str(AIRFLOW), "dags", "test", "chicago_taxi_monitoring", "-c", json.dumps(conf)], airflow_env
            )
            figures["dag_day_seconds"] = round(seconds, 1)
            figures["dag_day_under_target"] = seconds < TARGET_SECONDS
            print(f"# dag_day: {seconds:.1f} s", file=sys.stderr)
        figures["target_seconds"] = TARGET_SECONDS
        print(json.dumps({"benchmark": "monitoring", **figures}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
