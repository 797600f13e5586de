"""A real training window: the taxi sample landed, split at span 2016-12, and its transform learned."""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CONFIG_PATH, SAMPLE_CSV
from tfpipe.config import TrainingConfig, load_pipeline_config
from tfpipe.data import split
from tfpipe.data.landing import land_spans
from tfpipe.stages import RESULT_PREFIX, ingest, transform


@dataclass
class Window:
    splits: Path
    transform: Path


@pytest.fixture(scope="session")
def window(tmp_path_factory) -> Window:
    root = tmp_path_factory.mktemp("window")
    land_spans(SAMPLE_CSV, root / "landing", "trip_start_timestamp")
    ingest.run(
        argparse.Namespace(
            output_uri=str(root / "examples"), landing_uri=str(root / "landing"), span="2016-12", data_uri=None
        )
    )
    split.run(
        argparse.Namespace(
            examples_uri=str(root / "examples"),
            landing_uri=str(root / "landing"),
            span="2016-12",
            first_span="2013-01",
            config=load_pipeline_config(CONFIG_PATH).training.split.model_dump_json(),
            label="big_tipper",
            timestamp_column="trip_start_timestamp",
            output_uri=str(root / "splits"),
        )
    )
    result = transform.run(argparse.Namespace(splits_uri=str(root / "splits"), output_uri=str(root / "transform")))
    return Window(root / "splits", Path(result["transform_uri"]))


def training_config(**overrides) -> TrainingConfig:
    """The pipeline's training config, with small hyperparameters so tests train in seconds."""
    config = load_pipeline_config(CONFIG_PATH).training
    values = config.model_dump()
    values["hyperparameters"].update({"hidden": [16], "epochs": 2})
    for key, value in overrides.items():
        values[key] = value
    return TrainingConfig.model_validate(values)


@dataclass
class StageRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict:
        line = next(line for line in self.stdout.splitlines() if line.startswith(RESULT_PREFIX))
        return json.loads(line[len(RESULT_PREFIX) :])

    @property
    def error(self) -> str:
        line = next(line for line in self.stdout.splitlines() if line.startswith("TFPIPE_ERROR "))
        return json.loads(line[len("TFPIPE_ERROR ") :])["message"]


def train_argv(ml_python: str, window: Window, output: Path, config: TrainingConfig, *extra: str) -> list[str]:
    return [
        ml_python,
        "-m",
        "tfpipe",
        "train",
        "--splits-uri",
        str(window.splits),
        "--transform-uri",
        str(window.transform),
        "--output-uri",
        str(output),
        "--config",
        config.model_dump_json(),
        *extra,
    ]


def run_stage(argv: list[str], timeout: float = 600) -> StageRun:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return StageRun(done.returncode, done.stdout, done.stderr)
