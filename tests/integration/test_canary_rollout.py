"""Canary rollouts against the real model server, under a steady load from a separate process.

Real SavedModels (trained by the ML stages, run as subprocesses of the ML runtime: land-spans, ingest,
split, transform, train), the real server (`python -m tfpipe serve`) and the real load generator
(`python -m tfpipe.serving.loadgen`, 250 requests per second). The operators run their real defer /
trigger / execute_complete loop: each CanaryAnalysisTrigger is rebuilt from its serialized form, as
the triggerer does, and its `run()` is driven with asyncio.

Short windows (3 s, polled every second) keep this quick; the decisions are the same as at 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from tests.conftest import CONFIG_PATH, ML_PYTHON, PROJECT_ROOT, SAMPLE_CSV, write_sample_rows
from tests.integration.airflow_stack import free_port
from tests.unit.tfpipe_airflow.test_rollout_operator import FakeTI
from tfpipe.config import AlertsConfig, RolloutConfig, TrainingConfig, load_pipeline_config
from tfpipe.stages import RESULT_PREFIX
from tfpipe_airflow.hooks.model_server import ModelServerHook
from tfpipe_airflow.operators.rollout import CanaryRolloutOperator, RollbackDeploymentOperator
from tfpipe_airflow.triggers.rollout import CanaryAnalysisTrigger

pytestmark = pytest.mark.integration
TOKEN = "integration-test-admin-token"
RATE = 250
CONFIG = load_pipeline_config(CONFIG_PATH)
SERVING = CONFIG.serving
ROLLOUT = RolloutConfig.model_validate(
    {
        "steps": [25, 50, 100],
        "analysis": {
            "window_seconds": 3,
            "poll_seconds": 1,
            "min_requests": 50,
            # Two honest retrains here (2 epochs, seeds 1 and 2) differ by a distance of 0.2-0.25 (their
            # calibration moves mass across the 0.05-wide buckets); a constant model scores about 0.97.
            "max_prediction_drift": 0.35,
            # The shipped latency guard: a loaded machine moves p99 by a few ms between windows, and the
            # 100% step compares with stable's p99 from an earlier window.
            "max_p99_latency_ratio": CONFIG.rollout.analysis.max_p99_latency_ratio,
            "p99_latency_slack_ms": CONFIG.rollout.analysis.p99_latency_slack_ms,
            "failure_limit": 0,
            "error_limit": 1,
            "inconclusive": "fail",
        },
        "timeout_minutes": 5,
    }
)


def stage(*argv: str, timeout: float = 300) -> dict[str, Any]:
    done = subprocess.run(
        [str(ML_PYTHON), "-m", "tfpipe", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert done.returncode == 0 and lines, f"{argv[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def start_stage(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(ML_PYTHON), "-m", "tfpipe", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def finish(process: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    output, _ = process.communicate(timeout=timeout)
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    assert process.returncode == 0 and lines, output[-3000:]
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


@dataclass
class Models:
    stable: str
    candidate: str
    constant: str
    error: str
    held_out_csv: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Two real models of the taxi sample (seeds 1 and 2), and two sabotaged copies of the second."""
    root = tmp_path_factory.mktemp("canary-models")
    stage("land-spans", "--source-uri", str(SAMPLE_CSV), "--landing-uri", str(root / "landing"))
    stage("ingest", "--landing-uri", str(root / "landing"), "--span", "2016-12", "--output-uri", str(root / "ex"))
    stage(
        "split",
        "--examples-uri",
        str(root / "ex"),
        "--landing-uri",
        str(root / "landing"),
        "--span",
        "2016-12",
        "--first-span",
        "2013-01",
        "--config",
        CONFIG.training.split.model_dump_json(),
        "--label",
        "big_tipper",
        "--timestamp-column",
        "trip_start_timestamp",
        "--output-uri",
        str(root / "splits"),
    )
    transform = stage("transform", "--splits-uri", str(root / "splits"), "--output-uri", str(root / "transform"))

    def train(name: str, epochs: int, seed: int) -> subprocess.Popen[str]:
        values = CONFIG.training.model_dump()
        values["hyperparameters"].update({"hidden": [16], "epochs": epochs})
        values.update({"workers": 1, "seed": seed})
        config = TrainingConfig.model_validate(values)
        return start_stage(
            "train",
            "--splits-uri",
            str(root / "splits"),
            "--transform-uri",
            transform["transform_uri"],
            "--output-uri",
            str(root / name),
            "--config",
            config.model_dump_json(),
            "--mode",
            "final",
            "--workers",
            "1",
        )

    first, second = train("model-a", 2, 1), train("model-b", 2, 2)
    stable, candidate = finish(first)["model_uri"], finish(second)["model_uri"]
    sabotage = {
        mode: start_stage(
            "sabotage-model", "--model-uri", candidate, "--mode", mode, "--output-uri", str(root / f"model-{mode}")
        )
        for mode in ("constant", "error")
    }
    broken = {mode: finish(process)["model_uri"] for mode, process in sabotage.items()}
    held_out = write_sample_rows(root / "held_out.csv", 3000, start=11000)
    return Models(stable, candidate, broken["constant"], broken["error"], held_out)


@dataclass
class Server:
    port: int
    url: str
    log: Path


@pytest.fixture(scope="module")
def server(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("model-server")
    port = free_port()
    log = root / "server.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [
                str(ML_PYTHON),
                "-m",
                "tfpipe",
                "serve",
                "--config",
                str(CONFIG_PATH),
                "--model-uri",
                models.stable,
                "--version",
                "1",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-request-log",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, SERVING.local.admin_token_env: TOKEN, "TFPIPE_PROJECT_ROOT": str(PROJECT_ROOT)},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "ready at" not in log.read_text():
            assert process.poll() is None, f"the model server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the model server did not get ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)
        yield Server(port, f"http://127.0.0.1:{port}", log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def hook(server: Server, monkeypatch: pytest.MonkeyPatch) -> ModelServerHook:
    """The Airflow connection the operators use, pointing at this server."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFPIPE_MODEL_SERVER",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": server.port, "password": TOKEN}),
    )
    return ModelServerHook(SERVING.local.conn_id, actor="integration-test")


@contextlib.contextmanager
def steady_load(server: Server, models: Models, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The load generator in its own process at RATE requests per second; its report when the block ends."""
    stop, report_path = tmp_path / "stop-load", tmp_path / "load-report.json"
    process = subprocess.Popen(
        [
            str(ML_PYTHON),
            "-m",
            "tfpipe.serving.loadgen",
            "--url",
            server.url,
            "--csv",
            str(models.held_out_csv),
            "--rate",
            str(RATE),
            "--duration",
            "600",
            "--stop-file",
            str(stop),
            "--report",
            str(report_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    report: dict[str, Any] = {}
    try:
        time.sleep(2.0)  # it reads the trips and the signature, then sends
        assert process.poll() is None, process.communicate()[0][-3000:]
        yield report
    finally:
        stop.touch()
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output[-3000:]
        report.update(json.loads(report_path.read_text()))
        print(f"\nload: {json.dumps(report, sort_keys=True)}")


def make_context(task_id: str) -> dict[str, Any]:
    ti = FakeTI(task_id)
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id}


def canary(version: str, model_uri: str) -> tuple[CanaryRolloutOperator, dict[str, Any]]:
    with DAG("chicago_taxi_training", schedule=None):
        task = CanaryRolloutOperator(
            task_id="canary_rollout",
            version=version,
            model_uri=model_uri,
            serving=SERVING,
            rollout=ROLLOUT,
            alerts=AlertsConfig(),
        )
    return task, make_context("canary_rollout")


async def _first_event(trigger: CanaryAnalysisTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger yielded nothing")


def run_rollout(task: CanaryRolloutOperator, context: dict[str, Any]) -> Any:
    """execute, then for each deferral: the trigger as the triggerer runs it, and the method it resumes."""
    try:
        return task.execute(context)
    except TaskDeferred as deferred:
        current = deferred
    while True:
        classpath, kwargs = current.trigger.serialize()
        assert classpath == "tfpipe_airflow.triggers.rollout.CanaryAnalysisTrigger"
        payload = asyncio.run(_first_event(CanaryAnalysisTrigger(**kwargs)))
        try:
            return getattr(task, current.method_name)(context, event=payload, **(current.kwargs or {}))
        except TaskDeferred as again:
            current = again


def reset_to_version_1(hook: ModelServerHook, models: Models) -> None:
    deployment = hook.get_deployment()
    if deployment["stable"]["version"] != "1" or deployment["canary"]:
        hook.rollback("reset for the next test", stable="1")


def assert_no_failed_requests(report: dict[str, Any]) -> None:
    # At least 2 s of load at RATE: a failing canary is rolled back within one poll, so a rollout can be short.
    assert report["sent"] >= RATE * 2, report
    assert report["achieved_rate"] >= 200, report
    assert report["failed"] == 0 and report["succeeded"] == report["sent"], report["errors"]


def test_a_constant_canary_is_rolled_back_on_drift_with_no_failed_request(server, models, hook, tmp_path):
    reset_to_version_1(hook, models)
    task, context = canary("3", models.constant)
    with steady_load(server, models, tmp_path) as report, pytest.raises(AirflowFailException) as failure:
        run_rollout(task, context)

    message = str(failure.value)
    assert "aborted at 25% and rolled back" in message
    assert "prediction drift" in message and "is above max_prediction_drift 0.35" in message
    after = hook.get_deployment()
    assert after["stable"]["version"] == "1" and after["canary"] is None
    assert {item["version"] for item in after["loaded"]} >= {"1", "3"}, "the canary stays loaded, with no traffic"
    record = context["ti"].xcoms["rollout"]
    rollback = record["rollback"]
    print(f"\nrollback (drift): {json.dumps(rollback)}")
    assert rollback["seconds"] < 1 and rollback["round_trip_seconds"] < 1
    assert rollback["decision_to_zero_seconds"] < 1
    assert_no_failed_requests(report)
    assert report["versions"].get("3", 0) > 0, "the canary did serve before it was rolled back"


def test_an_erroring_canary_is_rolled_back_on_its_error_rate_and_clients_see_no_error(server, models, hook, tmp_path):
    reset_to_version_1(hook, models)
    task, context = canary("4", models.error)
    started = time.monotonic()
    with steady_load(server, models, tmp_path) as report, pytest.raises(AirflowFailException) as failure:
        run_rollout(task, context)
    took = time.monotonic() - started

    message = str(failure.value)
    assert "aborted at 25% and rolled back" in message
    assert "error rate of the canary 100.00%" in message and "is above max_error_rate 1.00%" in message
    assert hook.get_deployment()["canary"] is None
    analysis = context["ti"].xcoms["rollout"]["analyses"][-1]
    assert analysis.get("ended_early") is True, "a failing canary does not wait out the window"
    rollback = context["ti"].xcoms["rollout"]["rollback"]
    print(f"\nrollback (errors): {json.dumps(rollback)} in a rollout of {took:.1f} s")
    assert rollback["decision_to_zero_seconds"] < 1
    assert_no_failed_requests(report)
    assert report["fallbacks"] > 0, "the canary's failures were answered by stable"


def test_a_healthy_canary_is_rolled_out_to_100_percent_and_promoted_under_load(server, models, hook, tmp_path):
    reset_to_version_1(hook, models)
    task, context = canary("2", models.candidate)
    with steady_load(server, models, tmp_path) as report:
        result = run_rollout(task, context)

    print(f"\nanalyses: {json.dumps(result['analyses'])}")
    assert result["promoted"] is True and result["previous_stable"] == "1"
    assert [a["percent"] for a in result["analyses"]] == [25, 50, 100]
    assert all(a["verdict"] == "Successful" for a in result["analyses"])
    assert result["analyses"][-1]["stable_compared"] == "reference", "at 100% stable is compared from 50%"
    after = hook.get_deployment()
    assert after["stable"]["version"] == "2" and after["canary"] is None
    assert {item["version"] for item in after["loaded"]} == {"1", "2"}, "the old stable stays warm; others go"
    assert_no_failed_requests(report)
    assert report["versions"].get("1", 0) > 0 and report["versions"].get("2", 0) > 0, report["versions"]


def test_the_rollback_operator_moves_all_traffic_back_at_once(server, models, hook, tmp_path):
    if hook.get_deployment()["stable"]["version"] != "2":
        hook.load_version("2", models.candidate)
        hook.set_traffic("2", None, 0)
    with DAG("chicago_taxi_rollback", schedule=None):
        task = RollbackDeploymentOperator(
            task_id="rollback_traffic",
            serving=SERVING,
            version="1",
            model_uri=models.stable,
            reason="integration test: tips look wrong",
            actor="alice",
        )
    with steady_load(server, models, tmp_path) as report:
        time.sleep(1.0)  # version 2 serves everything, then ...
        result = task.execute(make_context("rollback_traffic"))
        # Requests routed to version 2 just before the switch are counted when they complete: let them drain.
        time.sleep(0.5)
        before = hook.scrape_metrics()
        time.sleep(1.0)
        after = hook.scrape_metrics()

    print(f"\nmanual rollback: {json.dumps(result)}")
    assert result["changed"] and result["previous_stable"] == "2" and result["version"] == "1"
    assert result["seconds"] < 1 and result["round_trip_seconds"] < 1
    deployment = hook.get_deployment()
    assert deployment["stable"]["version"] == "1" and deployment["canary"] is None
    assert_no_failed_requests(report)

    from tfpipe.rollout.metrics import REQUESTS, parse_metrics

    window = parse_metrics(after).delta(parse_metrics(before))
    by_version = window.values_by(REQUESTS, "version", model=SERVING.model_name)
    assert by_version.get("1", 0) > 100 and by_version.get("2", 0) == 0, by_version
    assert "admin rollback by alice" in server.log.read_text()


REGISTRY_SETUP = """
import sys
from tfpipe.registry.mlflow_registry import ModelRegistry
tracking_uri, name, first, second = sys.argv[1:5]
registry = ModelRegistry(tracking_uri)
registry.client.create_registered_model(name)
for source in (first, second):
    registry.client.create_model_version(name, source)
registry.promote_to_champion(name, "1", actor="pipeline", run_key="train-1")
registry.promote_to_champion(name, "2", actor="pipeline", run_key="train-2")
"""
REGISTRY_READ = """
import json, sys
from tfpipe.registry.mlflow_registry import ModelRegistry
registry = ModelRegistry(sys.argv[1])
print(json.dumps({"history": registry.deployment_history(sys.argv[2]),
                  "champion": registry.find_baseline(sys.argv[2]).version}))
"""


def test_the_rollback_dag_from_its_form_moves_traffic_and_records_who_and_why(server, models, hook, tmp_path):
    """`airflow dags test` runs the DAG as a triggered run: the rollback-target stage picks the previous
    champion, the operator moves all traffic, the record-rollback stage writes who, when and why."""
    model_name = CONFIG.evaluation.model_name
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ml = [str(ML_PYTHON), "-c"]
    subprocess.run([*ml, REGISTRY_SETUP, tracking_uri, model_name, models.stable, models.candidate], check=True)
    hook.load_version("2", models.candidate)
    hook.rollback("the registry's champion serves", stable="2")

    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TFPIPE_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "TFPIPE_ML_PYTHON": str(ML_PYTHON),
        "TFPIPE_PROJECT_ROOT": str(PROJECT_ROOT),
        "AIRFLOW_CONN_TFPIPE_MODEL_SERVER": os.environ["AIRFLOW_CONN_TFPIPE_MODEL_SERVER"],
    }
    airflow = [str(PROJECT_ROOT / ".venv" / "bin" / "airflow")]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=180)
    done = subprocess.run(
        [*airflow, "dags", "test", "chicago_taxi_rollback", "-c", json.dumps({"reason": "tips look wrong"})],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "all traffic on version 1" in done.stdout + done.stderr

    deployment = hook.get_deployment()
    assert deployment["stable"]["version"] == "1" and deployment["canary"] is None
    read = subprocess.run([*ml, REGISTRY_READ, tracking_uri, model_name], check=True, capture_output=True, text=True)
    registry = json.loads(read.stdout.strip().splitlines()[-1])
    assert registry["champion"] == "1"
    last = registry["history"][-1]
    # `airflow dags test` runs as the user "dag_test"; from the UI this is the user who triggered the run.
    assert (last["event"], last["version"], last["previous"]) == ("rollback", "1", "2")
    assert (last["by"], last["reason"]) == ("dag_test", "tips look wrong") and last["at"]
