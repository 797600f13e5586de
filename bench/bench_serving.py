"""Model server latency and throughput: our server against a naive one, and the in-process SavedModel call.

A big_tipper model of the default design is trained on the taxi sample (2 epochs) and exported. Then:

- in_process: the SavedModel's `serving_default` concrete function called at batch size 1 on real trips,
  in a fresh process with the server's TensorFlow thread settings (p50/p99 of --calls calls);
- tfpipe: `python -m tfpipe serve` (the pipeline's serving config, request log on) in its own process;
- naive: an aiohttp handler that calls Keras `model.predict` once per request (written here).

Load comes from the load generator (`python -m tfpipe.serving.loadgen`, open loop, one trip per
request, sticky users) in a separate process. For each server: latency p50/p99 at 200 requests/s (as
the client sees it, scheduled send to answer), then the rate is stepped up and the highest rate whose
p99 stays under 20 ms with no failures is its throughput; the highest rate it kept up with at all (no
failures, at least 95% answered, p99 under 1 s) is reported too. For our server the 200 requests/s run
also gives its own view (the latency histogram's bucket bounds holding p50 and p99, request parsing to
answer). The load generator and the server share the machine's cores, so high rates measure both; the
1-minute load average is reported because other work on the machine inflates every figure here, the
in-process call's included.

    python bench/bench_serving.py [--seconds S] [--calls N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIME = "ml"
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "chicago_taxi" / "taxi_big_tipper.csv"
CONFIG = ROOT / "dags" / "configs" / "chicago_taxi.yaml"
MODEL = "big_tipper"
BASE_RATE = 200
P99_LIMIT_MS = 20.0
OURS_RATES = (400, 800, 1200, 1600, 2000, 2500, 3000, 3500, 4000)
NAIVE_RATES = (2, 5, 10, 20, 40, 80, 160)

LOADGEN = [sys.executable, "-m", "tfpipe.serving.loadgen"]
SERVE = [sys.executable, "-m", "tfpipe", "serve"]
# Modes run in their own process: python bench_serving.py --naive MODEL PORT | --in-process MODEL CSV CALLS
NAIVE = "--naive"
IN_PROCESS = "--in-process"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1", **extra}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_model(work: Path) -> str:
    """The SavedModel folder; the transform and the Keras weights next to it, for the naive server."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfpipe.training import model as m

    m.keras.utils.set_random_seed(0)
    columns = m.feature_columns()
    transform = m.analyze(m.make_dataset(SAMPLE, 1024, columns=columns))
    model = m.build_model(transform)
    model.fit(m.make_dataset(SAMPLE, 256, shuffle=True, seed=0, columns=columns), epochs=2, verbose=0)
    (work / "transform.json").write_text(json.dumps(transform))
    model.save_weights(str(work / "weights.h5"))
    return m.export_serving_model(model, work / "model")


def held_out(work: Path, rows: int = 3000) -> Path:
    path = work / "held_out.csv"
    with open(SAMPLE, newline="") as source, open(path, "w", newline="") as target:
        reader, writer = csv.reader(source), csv.writer(target, lineterminator="\n")
        writer.writerow(next(reader))
        body = list(reader)
        writer.writerows(body[-rows:])
    return path


# ---------------------------------------------------------------------------------------------------------
# The naive server and the in-process call (each in its own process)


def naive_server(model_uri: str, port: int) -> None:
    """Parse JSON, fill the missing defaults, Keras `predict` per request on the event loop; TF Serving's paths."""
    import numpy as np
    from aiohttp import web

    from tfpipe.serving.models import ModelVersion
    from tfpipe.training import model as m

    # The trained Keras model, rebuilt from its transform and weights (its Lambda layers do not deserialize).
    folder = Path(model_uri).parent
    model = m.build_model(json.loads((folder / "transform.json").read_text()))
    model.load_weights(str(folder / "weights.h5"))
    dtypes = {name: tensor.dtype for name, tensor in model.input.items()}
    version = ModelVersion("1", model_uri)
    version.load(1000, 1)  # only for the metadata answer the load generator reads
    metadata = version.metadata(MODEL)
    defaults = {"int64": -1, "float32": float("nan"), "string": ""}

    async def predict(request: web.Request) -> web.Response:
        instances = (await request.json())["instances"]
        features = {}
        for name, dtype in dtypes.items():
            missing = defaults[dtype.name]
            values = [missing if row.get(name) is None else row[name] for row in instances]
            array = np.asarray(values, dtype=object if dtype.name == "string" else dtype.as_numpy_dtype)
            features[name] = array.reshape(-1, 1)
        probabilities = model.predict(features, verbose=0).reshape(-1)
        return web.json_response({"predictions": probabilities.tolist()})

    async def meta(request: web.Request) -> web.Response:
        return web.json_response(metadata)

    app = web.Application()
    app.router.add_post(f"/v1/models/{MODEL}:predict", predict)
    app.router.add_get(f"/v1/models/{MODEL}/metadata", meta)
    print(f"naive server ready at http://127.0.0.1:{port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def in_process(model_uri: str, csv_path: str, calls: int) -> None:
    """p50/p99 of the concrete `serving_default` at batch 1, with the server's thread settings."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from tfpipe.serving import models
    from tfpipe.training import model as m

    models.configure_threads()
    function = tf.saved_model.load(model_uri).signatures["serving_default"]
    names = list(function.structured_input_signature[1])
    features = m.features_from_frame(pd.read_csv(csv_path), names)
    rows = len(next(iter(features.values())))
    for i in range(50):  # warm-up
        function(**{k: tf.constant(v[i : i + 1]) for k, v in features.items()})
    times = []
    for i in range(calls):
        j = i % rows
        started = time.perf_counter()
        function(**{k: tf.constant(v[j : j + 1]) for k, v in features.items()})["probabilities"].numpy()
        times.append((time.perf_counter() - started) * 1000)
    print(
        json.dumps(
            {
                "calls": calls,
                "p50_ms": round(float(np.percentile(times, 50)), 3),
                "p99_ms": round(float(np.percentile(times, 99)), 3),
            }
        )
    )


# ---------------------------------------------------------------------------------------------------------
# Driving the servers


class Server:
    def __init__(self, argv: list[str], env: dict[str, str], ready_text: str, name: str) -> None:
        self.name = name
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the server writes to it while it runs
            "w+", prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            argv, env=env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while ready_text not in Path(self.log_file.name).read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} server did not start:\n{Path(self.log_file.name).read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log_file.close()
        os.unlink(self.log_file.name)


def _load_options(rate: float, seconds: float) -> list[str]:
    return ["--rate", str(rate), "--duration", str(seconds), "--timeout", "5", "--connections", "100"]


def load(url: str, trips: Path, rate: float, seconds: float, work: Path) -> dict:
    report = work / f"load-{rate}.json"
    done = subprocess.run(
        [*LOADGEN, "--url", url, "--csv", str(trips), "--report", str(report), *_load_options(rate, seconds)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
    return json.loads(report.read_text())


def _figures(report: dict) -> dict:
    return {
        "rate": report["rate"],
        "achieved_rate": report["achieved_rate"],
        "answered_rate": report["answered_rate"],
        "p50_ms": report["latency_ms"]["p50"],
        "p99_ms": report["latency_ms"]["p99"],
        "failed": report["failed"],
    }


def measure(
    url: str,
    trips: Path,
    rates: tuple[int, ...],
    seconds: float,
    base_seconds: float,
    work: Path,
    base_last: bool,
    server_metrics: bool,
) -> dict:
    """The base rate, then the steps up; `base_last` when the server cannot keep up with the base rate (its
    backlog would still be draining when the next step starts)."""
    load(url, trips, min(rates[0], 50), 2, work)  # warm the connection path

    def base_rate() -> dict:
        before = latency_buckets(url) if server_metrics else {}
        figures = _figures(load(url, trips, BASE_RATE, base_seconds, work))
        if server_metrics:
            after = latency_buckets(url)
            figures["server_side_p50_ms_at_most"] = bucket_quantile(before, after, 0.50)
            figures["server_side_p99_ms_at_most"] = bucket_quantile(before, after, 0.99)
        log(f"  {BASE_RATE} rps: {figures}")
        return figures

    base = None if base_last else base_rate()
    steps, best, kept_up = [], 0.0, 0.0
    for rate in rates:
        step = _figures(load(url, trips, rate, seconds, work))
        steps.append(step)
        log(f"  {rate} rps: {step}")
        healthy = step["failed"] == 0 and step["answered_rate"] >= 0.95 * rate
        if healthy and step["p99_ms"] is not None and step["p99_ms"] < 1000:
            kept_up = max(kept_up, step["answered_rate"])
        if healthy and step["p99_ms"] is not None and step["p99_ms"] < P99_LIMIT_MS:
            best = max(best, step["answered_rate"])
        elif not healthy or step["p99_ms"] is None or step["p99_ms"] >= 1000:
            break
    if base is None:
        base = base_rate()
    return {
        f"at_{BASE_RATE}_rps": base,
        "max_rps_p99_under_20ms": best,
        "max_rps_kept_up": kept_up,
        "steps": steps,
    }


def latency_buckets(url: str) -> dict[float, float]:
    """The server's own latency histogram (all versions and roles): {upper bound in s: cumulative count}."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "tfpipe_serving_request_latency_seconds_bucket" and sample.labels["version"]:
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0) + sample.value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The upper bound (ms) of the histogram bucket holding quantile q of the requests between two scrapes."""
    counts = {bound: after[bound] - before.get(bound, 0) for bound in after}
    total = counts.get(float("inf"), 0)
    if not total:
        return None
    return next((bound * 1000 for bound in sorted(counts) if counts[bound] >= q * total), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per throughput step")
    parser.add_argument("--base-seconds", type=float, default=15.0, help="seconds at 200 requests/s")
    parser.add_argument("--calls", type=int, default=3000, help="in-process calls")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tfpipe-bench-serving-"))
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        log("training the model")
        model_uri = train_model(work)
        trips = held_out(work)
        log("in-process calls")
        done = subprocess.run(
            [sys.executable, __file__, IN_PROCESS, model_uri, str(trips), str(args.calls)],
            capture_output=True,
            text=True,
            env=_env(),
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        figures: dict = {"benchmark": "serving", "in_process_batch_1": json.loads(done.stdout.strip().splitlines()[-1])}

        log("our server")
        port = free_port()
        ours = Server(
            [*SERVE, "--config", str(CONFIG), "--model-uri", model_uri, "--host", "127.0.0.1", "--port", str(port)],
            _env(TFPIPE_REQUEST_LOG_DIR=str(work / "requests")),
            "ready at",
            "tfpipe",
        )
        try:
            url = f"http://127.0.0.1:{port}"
            figures["tfpipe"] = measure(url, trips, OURS_RATES, args.seconds, args.base_seconds, work, False, True)
        finally:
            ours.stop()

        log("naive server")
        port = free_port()
        naive = Server([sys.executable, __file__, NAIVE, model_uri, str(port)], _env(), "naive server ready", "naive")
        try:
            naive_url = f"http://127.0.0.1:{port}"
            figures["naive"] = measure(naive_url, trips, NAIVE_RATES, args.seconds, 3.0, work, True, False)
        finally:
            naive.stop()

        ours_rps, naive_rps = figures["tfpipe"]["max_rps_p99_under_20ms"], figures["naive"]["max_rps_p99_under_20ms"]
        ours_kept, naive_kept = figures["tfpipe"]["max_rps_kept_up"], figures["naive"]["max_rps_kept_up"]
        figures["throughput_ratio_p99_under_20ms"] = round(ours_rps / naive_rps, 1) if naive_rps else None
        figures["throughput_ratio_kept_up"] = round(ours_kept / naive_kept, 1) if naive_kept else None
        p99 = figures["tfpipe"][f"at_{BASE_RATE}_rps"]["p99_ms"]
        # The naive server's p99 is over 20 ms even at a trickle (Keras predict per request): then the
        # comparison falls back on the rates each kept up with.
        if naive_rps:
            five_times = ours_rps >= 5 * naive_rps
        elif ours_rps:
            five_times = True
        else:
            five_times = bool(naive_kept) and ours_kept >= 5 * naive_kept
        figures["targets"] = {
            "p99_under_5ms_at_200rps": p99 is not None and p99 < 5.0,
            "throughput_5x_naive": five_times,
        }
        figures["wall_seconds"] = round(time.perf_counter() - started, 1)
        figures["cpus"] = os.cpu_count()
        # Other work on the machine inflates every latency here, the in-process call's included.
        figures["load_average_1min"] = {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)}
        print(json.dumps(figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == NAIVE:
        naive_server(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == IN_PROCESS:
        in_process(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(main())
