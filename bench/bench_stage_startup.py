"""Start-up overhead of an ML stage run through the local hook, as a task runs it.

Overhead = wall time of LocalMLStageHook.run() minus the time the stage itself reports: interpreter
start, `tfpipe` import, argument parsing and result handling. Measured on `ingest` of 100 trips
(a stage that imports no TensorFlow), beside a bare `python -c pass` of the ML interpreter and the
import time of the libraries heavy stages load (TFDV with TensorFlow and Beam, Great Expectations),
which every run of such a stage pays once.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tfpipe_airflow.hooks.ml_stage import LocalMLStageHook

RUNTIME = "airflow"
ROOT = Path(__file__).resolve().parent.parent
ML_PYTHON = str(ROOT / ".venv-ml" / "bin" / "python")
SAMPLE = ROOT / "data" / "chicago_taxi" / "taxi_big_tipper.csv"


def _median_run(hook: LocalMLStageHook, stage: str, argv: list[str], repeats: int) -> dict[str, float]:
    totals, stage_times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        result = hook.run(stage, argv, log_line=lambda line: None)
        totals.append(time.perf_counter() - started)
        stage_times.append(result["usage"]["wall_seconds"])
    return {
        "median_total_seconds": round(statistics.median(totals), 4),
        "median_stage_seconds": round(statistics.median(stage_times), 4),
        "median_overhead_seconds": round(statistics.median(t - s for t, s in zip(totals, stage_times, strict=True)), 4),
        "repeats": repeats,
    }


def main() -> None:
    bare = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([ML_PYTHON, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - started)
    hook = LocalMLStageHook(python=ML_PYTHON)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "trips.csv"
        with open(SAMPLE, newline="") as handle, open(source, "w", newline="") as out:
            rows = csv.reader(handle)
            csv.writer(out).writerows(row for index, row in zip(range(101), rows, strict=False))
        examples = str(Path(folder) / "examples")
        ingest = _median_run(hook, "ingest", ["--data-uri", str(source), "--output-uri", examples], repeats=5)
    imports = {}
    for module in ("tensorflow_data_validation", "great_expectations"):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([ML_PYTHON, "-W", "ignore", "-c", f"import {module}"], check=True, capture_output=True)
            times.append(time.perf_counter() - started)
        imports[module] = round(statistics.median(times), 3)
    print(
        json.dumps(
            {
                "benchmark": "stage_startup",
                "bare_python_median_seconds": round(statistics.median(bare), 4),
                "ingest": ingest,
                "median_import_seconds": imports,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
