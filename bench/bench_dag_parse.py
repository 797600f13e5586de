"""Parse time of each DAG file over the bare `airflow.sdk` import; target under 0.3 s each.

Each measurement runs in a fresh interpreter (as the dag-processor does for each parse): import
airflow.sdk first, then time the execution of the DAG file alone.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

RUNTIME = "airflow"
ROOT = Path(__file__).resolve().parent.parent
REPEATS = 7
TARGET_SECONDS = 0.3

PROBE = """
import importlib.util, json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
t2 = time.perf_counter()
heavy = ("tensorflow", "tensorflow_data_validation", "tensorflow_model_analysis", "apache_beam", "great_expectations")
print(json.dumps({"sdk_import": t1 - t0, "parse": t2 - t1,
                  "heavy_loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}))
"""


def main() -> None:
    env_note = "AIRFLOW_HOME from the environment"
    for dag_file in sorted((ROOT / "dags").glob("*.py")):
        samples = []
        for _ in range(REPEATS):
            done = subprocess.run(
                [sys.executable, "-c", PROBE, str(dag_file)], capture_output=True, text=True, check=True
            )
            samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
        parse = statistics.median(s["parse"] for s in samples)
        print(
            json.dumps(
                {
                    "benchmark": "dag_parse",
                    "dag_file": str(dag_file.relative_to(ROOT)),
                    "median_parse_seconds": round(parse, 4),
                    "max_parse_seconds": round(max(s["parse"] for s in samples), 4),
                    "median_airflow_sdk_import_seconds": round(statistics.median(s["sdk_import"] for s in samples), 4),
                    "repeats": REPEATS,
                    "target_seconds": TARGET_SECONDS,
                    "meets_target": parse < TARGET_SECONDS,
                    "ml_modules_loaded": samples[-1]["heavy_loaded"],
                    "note": env_note,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
