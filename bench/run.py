"""Run every benchmark and print one JSON object per benchmark on stdout (`make bench`).

Each benchmark is a script in this folder with a `RUNTIME = "airflow"` or `RUNTIME = "ml"` line
saying which virtual environment runs it. Figures are medians of repeated runs measured in this one
run; the machine is shared, so compare ratios within a run rather than figures across runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHONS = {"airflow": ROOT / ".venv" / "bin" / "python", "ml": ROOT / ".venv-ml" / "bin" / "python"}


def main(selected: list[str]) -> int:
    failures = 0
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if selected and name not in selected:
            continue
        runtime = re.search(r'^RUNTIME = "(\w+)"', script.read_text(), re.MULTILINE)
        python = PYTHONS[runtime.group(1) if runtime else "airflow"]
        print(f"# {name}", file=sys.stderr, flush=True)
        done = subprocess.run([str(python), str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        # Libraries may log to stdout; only the benchmark's JSON objects belong there.
        for line in done.stdout.splitlines():
            print(line, file=sys.stdout if line.startswith("{") else sys.stderr, flush=True)
        failures += done.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
