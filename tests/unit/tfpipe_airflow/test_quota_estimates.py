"""Per-stage estimates from measured usage (the stages' own `usage`), printed by the CLI in both runtimes' ways:
`python -m tfpipe.quota` on a URL, and `python -m tfpipe_airflow.hooks.quota` on the Airflow connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONFIG_PATH, PROJECT_ROOT
from tfpipe.artifacts import run_key
from tfpipe.quota import QuotaLedger
from tfpipe.quota.estimates import estimate, import_stage_results, percentile, usage_records

TRAIN_WALLS = [100.0, 110.0, 120.0, 130.0, 400.0]  # p90 (linear): 130 + 0.6 * 270 = 292


def _result(path: Path, wall: float, cpu: float, rss: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"model_uri": "/x", "usage": {"wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_mib": rss}}
    path.write_text(json.dumps(result))


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """Result files as runs leave them: scheduled runs, a mapped tuning, and a hand-made experiment run."""
    root = tmp_path / "artifacts"
    pipeline = root / "chicago_taxi"
    for month, wall in enumerate(TRAIN_WALLS[:4], start=1):
        run = pipeline / f"span=2016-{month:02d}" / f"run={run_key(f'scheduled__2016-{month:02d}-01T00:00:00+00:00')}"
        _result(run / "_stage_results" / "train_model.json", wall, wall * 1.9, 2000 + month * 100)
        _result(run / "_stage_results" / "validate_examples.json", 30.0 + month, 25.0, 900.0)
        for trial in range(2):
            _result(run / "_stage_results" / f"tune_model-{trial}.json", 60.0 + trial, 55.0, 1500.0)
    experiment = pipeline / "span=adhoc-3f2a9c1d0e4b" / "run=lr_0_003_wide_try"
    _result(experiment / "_stage_results" / "train_model.json", TRAIN_WALLS[4], 760.0, 3100.0)
    (experiment / "_stage_results" / "broken.json").write_text("{not json")
    return root


def test_percentile_interpolates_between_ranks():
    assert percentile(TRAIN_WALLS, 90) == pytest.approx(292.0)
    assert percentile([5.0], 90) == 5.0
    assert percentile([1.0, 2.0], 50) == 1.5


def test_estimates_from_recorded_usage_include_experiment_runs(artifacts, tmp_path):
    ledger = QuotaLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert import_stage_results(ledger, artifacts, "chicago_taxi") == 4 * 4 + 1
    assert import_stage_results(ledger, artifacts, "chicago_taxi") == 17, "a re-import replaces"
    assert len(ledger.usage_history("chicago_taxi")) == 17
    by_stage = {item.stage: item for item in estimate(ledger.usage_history())}
    train = by_stage["train"]
    assert train.runs == 5 and train.wall_seconds == pytest.approx(292.0)
    assert train.sources == ("experiment", "result-file")
    assert train.cores == 2, "1.9 CPU-seconds per second: two cores"
    assert train.peak_rss_mib == pytest.approx(2400 + 0.6 * 700)
    assert train.memory_gib == 3.5, "2820 MiB x 1.25 headroom = 3.44 GiB, up to the half GiB"
    assert by_stage["tune_trial"].runs == 8 and by_stage["validate"].runs == 4


def test_the_release_and_a_later_import_count_a_run_once(artifacts, tmp_path):
    ledger = QuotaLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record_usage(
        usage_records(
            pipeline="chicago_taxi",
            stage="train",
            task_id="train_model",
            run_id="scheduled__2016-01-01T00:00:00+00:00",
            usages=[{"wall_seconds": 100.0, "cpu_seconds": 190.0, "peak_rss_mib": 2100.0}],
            cores=2,
        )
    )
    import_stage_results(ledger, artifacts, "chicago_taxi")
    train = [row for row in ledger.usage_history("chicago_taxi", "train")]
    assert len(train) == 5


def _cli(module: str, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=PROJECT_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cli_imports_results_and_prints_p90_estimates_next_to_the_configured_requests(artifacts, tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {"TFPIPE_ARTIFACT_ROOT": str(artifacts)}
    imported = _cli("tfpipe.quota", "--ledger-url", url, "--config", str(CONFIG_PATH), "import-results", env=env)
    assert "recorded the usage of 17 stage runs of chicago_taxi" in imported
    printed = _cli("tfpipe.quota", "--ledger-url", url, "--config", str(CONFIG_PATH), "estimates", env=env)
    lines = printed.splitlines()
    assert lines[0] == "estimates for the next run (p90 of each stage's latest runs)"
    train = next(line for line in lines if line.startswith("chicago_taxi") and " train " in line)
    assert train.split()[:4] == ["chicago_taxi", "train", "5", "292.0s"]
    assert train.endswith("experiment,result-file")
    assert "configured: cpu 1, memory 4 GiB, expected 20 min (measured p: 4.9 min)" in printed

    # The same through the Airflow connection (the Airflow runtime's way), as JSON.
    airflow_env = {
        **env,
        "AIRFLOW_CONN_TFPIPE_QUOTA_LEDGER": json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}),
    }
    rows = json.loads(
        _cli("tfpipe_airflow.hooks.quota", "--config", str(CONFIG_PATH), "estimates", "--json", env=airflow_env)
    )
    assert {row["stage"]: row["runs"] for row in rows} == {"train": 5, "tune_trial": 8, "validate": 4}
    status = _cli("tfpipe_airflow.hooks.quota", "--config", str(CONFIG_PATH), "status", env=airflow_env)
    assert "active reservations (0)" in status


def test_record_adds_one_experiment_run_from_its_result_file(tmp_path):
    result = tmp_path / "result.json"
    _result(result, 55.0, 50.0, 800.0)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _cli(
        "tfpipe.quota",
        "--ledger-url",
        url,
        "record",
        "--pipeline",
        "p",
        "--stage",
        "validate",
        "--result-file",
        str(result),
        env={},
    )
    [row] = QuotaLedger.from_url(url).usage_history("p", "validate")
    assert (row["source"], row["wall_seconds"]) == ("experiment", 55.0)
