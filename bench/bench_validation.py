"""Validate stage on 1,000,000 taxi-shaped rows against a previous span of as many; target 20 s and 2 GiB.

The validate stage of one monthly span is the pipeline's heaviest step on plain CPUs, and it runs
in a pod with a memory limit, so both wall time and peak memory matter. Each measurement runs in a
fresh interpreter, as a task runs it, so imports and Beam start-up are paid as in production.
Beside it, TFDV's own `generate_statistics_from_csv` on the same file, as the reference point of
what statistics alone cost without our decoder.

Peak memory is taken three ways because they disagree: the stage's own figure (the largest single
process, from getrusage), GNU time's %M (the same, seen from outside) and the peak of the summed
resident memory of the whole process tree, sampled from /proc every 50 ms. Only the last counts
Beam's worker processes together, which is what a pod's memory limit sees.

Data generation is not measured against the target; its time is reported separately.

    python bench/bench_validation.py [--rows N] [--beam-args '["--runner=DirectRunner", ...]'] [--skip-tfdv]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RUNTIME = "ml"
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "chicago_taxi" / "taxi_big_tipper.csv"
CONFIG = ROOT / "dags" / "configs" / "chicago_taxi.yaml"
GNU_TIME = "/usr/bin/time"
ROWS = 1_000_000
SPAN, PREVIOUS = "2015-03", "2015-02"
TARGET = {"seconds": 20, "peak_gib": 2}
TIMEOUT_SECONDS = 300
_PHASES = {
    "statistics_seconds": re.compile(r"statistics of .+? in ([\d.]+) s"),
    "great_expectations_seconds": re.compile(r"Great Expectations suite on \d+ rows in ([\d.]+) s"),
}

TFDV_PROBE = """
import json, sys, time
started = time.perf_counter()
import tensorflow_data_validation as tfdv
imported = time.perf_counter()
stats = tfdv.generate_statistics_from_csv(data_location=sys.argv[1], output_path=sys.argv[2])
done = time.perf_counter()
print(json.dumps({"import_seconds": round(imported - started, 2), "statistics_seconds": round(done - imported, 2),
                  "rows": stats.datasets[0].num_examples}))
"""


def _tree_rss_kib(root: int) -> int:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def _measure(command: list[str]) -> dict:
    """Run a command in a fresh process; wall time, its output and three views of its peak memory."""
    timed = [GNU_TIME, "-f", "BENCH_MAXRSS_KIB %M", *command] if Path(GNU_TIME).exists() else command
    peak = [0]
    started = time.perf_counter()
    process = subprocess.Popen(timed, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished = threading.Event()

    def sample() -> None:
        while not finished.wait(0.05):
            peak[0] = max(peak[0], _tree_rss_kib(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    finished.set()
    sampler.join()
    gnu = re.findall(r"BENCH_MAXRSS_KIB (\d+)", stderr)
    return {
        "returncode": process.returncode,
        "wall_seconds": round(wall, 2),
        "gnu_time_max_rss_mib": round(int(gnu[-1]) / 1024, 1) if gnu else None,
        "process_tree_peak_rss_mib": round(peak[0] / 1024, 1),
        "stdout": stdout,
        "stderr": stderr,
    }


def _generate(python: str, output: Path, span: str, seed: int, rows: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            *(python, "-m", "tfpipe", "generate", "--sample-uri", str(SAMPLE), "--output-uri", str(output)),
            *("--rows", str(rows), "--first-span", span, "--last-span", span, "--seed", str(seed)),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def _widened_schema(curated: str, target: Path) -> dict[str, list[float]]:
    """Copy the curated schema with the max of each column the generator scales raised to what it can write.

    The generator scales every row by up to SCALE_LIMITS[1], the sample's real outliers included
    (1,710 miles, 72,120 s), so a million generated rows exceed the curated bounds and the stage
    stops on them. The benchmark measures a run that passes (the stage reports its usage only then);
    a failing run does the same work.
    """
    import math

    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from tfpipe.data.generate import SCALE_LIMITS, SCALED, SECONDS, load_sample

    schema = text_format.Parse(Path(curated).read_text(), schema_pb2.Schema())
    sample = load_sample(SAMPLE)
    widened = {}
    for feature in schema.feature:
        if feature.name not in {*SCALED, SECONDS} or feature.name not in sample.numbers:
            continue
        domain = feature.int_domain if feature.HasField("int_domain") else feature.float_domain
        largest = math.ceil(float(np.nanmax(sample.numbers[feature.name])) * SCALE_LIMITS[1])
        if domain.HasField("max") and domain.max < largest:
            widened[feature.name] = [domain.max, largest]
            domain.max = largest
    target.write_text(text_format.MessageToString(schema))
    return widened


def _validation_config(beam_args: list[str] | None, schema: Path) -> tuple[str, dict[str, list[float]]]:
    from tfpipe.config import load_pipeline_config

    validation = load_pipeline_config(CONFIG).validation
    widened = _widened_schema(validation.schema_path, schema)
    update: dict = {"schema_path": str(schema)}
    if beam_args is not None:
        update["beam_pipeline_args"] = beam_args
    return validation.model_copy(update=update).model_dump_json(), widened


def _result_line(stdout: str, prefix: str) -> dict | None:
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    return json.loads(lines[-1][len(prefix) :]) if lines else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--beam-args", help="JSON list replacing the config's beam_pipeline_args")
    parser.add_argument("--skip-tfdv", action="store_true", help="skip the generate_statistics_from_csv reference")
    options = parser.parse_args()
    beam_args = json.loads(options.beam_args) if options.beam_args else None
    python = sys.executable
    folder = Path(tempfile.mkdtemp(prefix="tfpipe-bench-validation-"))
    try:
        examples = folder / "examples"
        previous = folder / "previous" / "trips.csv"
        generation = _generate(python, examples / "trips.csv", SPAN, 0, options.rows)
        generation += _generate(python, previous, PREVIOUS, 1, options.rows)
        config, widened = _validation_config(beam_args, folder / "schema.pbtxt")

        run = _measure(
            [
                *(python, "-m", "tfpipe", "validate", "--examples-uri", str(examples)),
                *("--output-uri", str(folder / "validation"), "--config", config, "--span", SPAN),
                *("--previous-uri", str(previous)),
            ]
        )
        result = _result_line(run["stdout"], "TFPIPE_RESULT ")
        error = _result_line(run["stdout"], "TFPIPE_ERROR ")
        usage = (result or {}).get("usage", {})
        phases = {
            key: float(m[-1]) if (m := pattern.findall(run["stderr"])) else None for key, pattern in _PHASES.items()
        }
        if error:
            sys.stderr.write(run["stderr"][-4000:])
        validate = {
            "passed": bool(result and result.get("passed")),
            "error": error,
            "beam_pipeline_args": json.loads(config)["beam_pipeline_args"],
            "schema_max_widened": widened,
            "wall_seconds": run["wall_seconds"],
            "stage_wall_seconds": usage.get("wall_seconds"),
            "cpu_seconds": usage.get("cpu_seconds"),
            "stage_peak_rss_mib": usage.get("peak_rss_mib"),
            "gnu_time_max_rss_mib": run["gnu_time_max_rss_mib"],
            "process_tree_peak_rss_mib": run["process_tree_peak_rss_mib"],
            "rows_per_second": round(options.rows / run["wall_seconds"]),
            "rows_per_second_both_spans": round(2 * options.rows / run["wall_seconds"]),
            "phases": phases,
        }

        reference: dict = {"skipped": True}
        if not options.skip_tfdv:
            probe = _measure([python, "-c", TFDV_PROBE, str(examples / "trips.csv"), str(folder / "tfdv.tfrecord")])
            lines = [line for line in probe["stdout"].splitlines() if line.startswith("{")]
            figures = json.loads(lines[-1]) if probe["returncode"] == 0 and lines else {}
            if not figures:
                sys.stderr.write(probe["stderr"][-4000:])
            reference = {
                "returncode": probe["returncode"],
                "wall_seconds": probe["wall_seconds"],
                "gnu_time_max_rss_mib": probe["gnu_time_max_rss_mib"],
                "process_tree_peak_rss_mib": probe["process_tree_peak_rss_mib"],
                "rows_per_second": round(options.rows / probe["wall_seconds"]),
                **figures,
            }
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    peak_mib = max(filter(None, [validate["process_tree_peak_rss_mib"], validate["gnu_time_max_rss_mib"]]), default=0)
    print(
        json.dumps(
            {
                "benchmark": "validation_1m",
                "rows": options.rows,
                "previous_rows": options.rows,
                "generation_seconds": round(generation, 2),
                "validate": validate,
                "tfdv_generate_statistics_from_csv": reference,
                "target": TARGET,
                "meets_target": validate["passed"]
                and validate["wall_seconds"] <= TARGET["seconds"]
                and peak_mib <= TARGET["peak_gib"] * 1024,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
