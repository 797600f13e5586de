"""Shared fixtures: the project's paths, and small real data cut from the taxi sample."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CSV = PROJECT_ROOT / "data" / "chicago_taxi" / "taxi_big_tipper.csv"
CONFIG_PATH = PROJECT_ROOT / "dags" / "configs" / "chicago_taxi.yaml"
ML_PYTHON = PROJECT_ROOT / ".venv-ml" / "bin" / "python"

# Tests never touch the demo's Airflow state or the user's home: Airflow reads these when imported.
os.environ["AIRFLOW_HOME"] = str(PROJECT_ROOT / "state" / "test-airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "state" / "test-airflow" / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def ml_python() -> str:
    """The ML runtime's interpreter (this one when the tests already run in it)."""
    if (Path(sys.prefix) / "bin" / "python").resolve() == ML_PYTHON.resolve():
        return sys.executable
    assert ML_PYTHON.exists(), "the ML runtime is missing: run `make install`"
    return str(ML_PYTHON)


def write_sample_rows(path: Path, rows: int, start: int = 0) -> Path:
    """Write `rows` real trips (from row `start` of the sample) with the sample's header."""
    with open(SAMPLE_CSV, newline="") as source, open(path, "w", newline="") as target:
        reader = csv.reader(source)
        writer = csv.writer(target, lineterminator="\n")
        writer.writerow(next(reader))
        for index, row in enumerate(reader):
            if index >= start + rows:
                break
            if index >= start:
                writer.writerow(row)
    return path
