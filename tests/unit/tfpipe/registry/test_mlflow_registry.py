"""The registry on a real MLflow: a SQLite store in a temporary folder and a real (tiny) SavedModel."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

# tf.keras means tf-keras 2.16 in the ML runtime, as in the stages.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest
import tensorflow as tf

from tfpipe.errors import DataError, StageError, TransientError
from tfpipe.registry.mlflow_registry import ModelRegistry, metric_name, normalize_tracking_uri
from tfpipe.stages import RESULT_PREFIX, register

MODEL = "big_tipper"
EXPERIMENT = "chicago_taxi_test"
TRANSFORM_FINGERPRINT = "f" * 64
DATA_FINGERPRINT = "d" * 64
APPROVAL = {"approver": "ana@example.com", "approved_at": "2017-01-03T09:00:00+00:00", "mode": "required"}


class _Scorer(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probability": tf.sigmoid(self.weight * x)}


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "saved_model"
    scorer = _Scorer()
    tf.saved_model.save(scorer, str(path), signatures={"serving_default": scorer.serve})
    return path


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty, migrated MLflow database: creating one takes seconds, copying it does not."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    ModelRegistry(str(path)).client.search_experiments()
    return path


@pytest.fixture
def store(tmp_path, migrated_store) -> str:
    target = tmp_path / "mlflow" / "mlflow.db"
    target.parent.mkdir()
    shutil.copy(migrated_store, target)
    return str(target)


@dataclass
class Inputs:
    root: Path
    model: Path
    training_metrics: Path
    evaluation: Path
    splits: Path
    transform: Path
    schema: Path
    config: Path


def _write_json(path: Path, value: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def _blessing(blessed: bool) -> dict:
    failures = (
        []
        if blessed
        else [
            {
                "slice": "payment_type=Cash",
                "metric": "auc",
                "kind": "value",
                "bound": "min",
                "threshold": 0.75,
                "value": 0.71,
                "baseline_value": None,
                "by": 0.04,
            }
        ]
    )
    return {
        "decision": "BLESSED" if blessed else "NOT_BLESSED",
        "blessed": blessed,
        "reasons": [] if blessed else ["payment_type=Cash: auc 0.71 is below the minimum 0.75"],
        "failures": failures,
        "not_judged": [{"slice": "payment_type=Dispute", "examples": 3, "reason": "3 examples, fewer than 50"}],
        "baseline": {"state": "first_model", "version": None, "model_uri": None, "reason": "no model yet"},
        "thresholds_configured": 4,
    }


def _slice(name: str, features: dict, auc: float, examples: int) -> dict:
    candidate = {
        "auc": auc,
        "precision": 0.8,
        "recall": 0.7,
        "calibration": 1.01,
        "log_loss": 0.28,
        "example_count": examples,
        "mean_label": 0.27,
    }
    return {"slice": name, "features": features, "examples": examples, "judged": True, "candidate": candidate}


def write_inputs(root: Path, saved_model: Path, blessed: bool = True) -> Inputs:
    evaluation = root / "evaluation"
    _write_json(
        evaluation / "metrics.json",
        {
            "operating_threshold": 0.5,
            "slices": [
                _slice("Overall", {}, 0.92, 833),
                _slice("payment_type=Cash", {"payment_type": "Cash"}, 0.71 if not blessed else 0.81, 300),
                _slice("payment_type=Credit Card", {"payment_type": "Credit Card"}, 0.88, 450),
                _slice("payment_type=Cash&trip_start_day=1", {"payment_type": "Cash", "trip_start_day": 1}, 0.79, 60),
            ],
        },
    )
    _write_json(evaluation / "blessing.json", _blessing(blessed))
    training = {
        "eval_auc": 0.915,
        "eval_log_loss": 0.301,
        "train_seconds": 12.5,
        "examples_per_second": 800.0,
        "chief": True,
        "resumed_from_epoch": None,
        "mode": "final",
        "epochs": [{"epoch": 1, "loss": 0.52, "seconds": 6.0}, {"epoch": 2, "loss": 0.41, "seconds": 6.5}],
        "hyperparameters": {"hidden": [16], "learning_rate": 0.001, "wide": False, "batch_size": 256, "epochs": 2},
        "transform_fingerprint": TRANSFORM_FINGERPRINT,
    }
    schema = root / "schema" / "schema.pbtxt"
    schema.parent.mkdir(parents=True)
    schema.write_text('feature { name: "fare" type: FLOAT }\n')
    config = root / "config" / "chicago_taxi.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("pipeline: chicago_taxi\n")
    return Inputs(
        root=root,
        model=saved_model,
        training_metrics=_write_json(root / "model" / "metrics.json", training),
        evaluation=evaluation,
        splits=_write_json(
            root / "splits" / "manifest.json", {"span": "2016-12", "fingerprint": DATA_FINGERPRINT}
        ).parent,
        transform=_write_json(root / "transform" / "transform.json", {"fingerprint": TRANSFORM_FINGERPRINT}),
        schema=schema,
        config=config,
    )


def stage_argv(store: str, inputs: Inputs, run_key: str, approval: dict | None = None) -> list[str]:
    return [
        "--tracking-uri",
        store,
        "--experiment",
        EXPERIMENT,
        "--model-name",
        MODEL,
        "--run-key",
        run_key,
        "--model-uri",
        str(inputs.model),
        "--training-metrics-uri",
        str(inputs.training_metrics),
        "--evaluation-uri",
        str(inputs.evaluation),
        "--splits-uri",
        str(inputs.splits),
        "--transform-uri",
        str(inputs.transform),
        "--schema-path",
        str(inputs.schema),
        "--config-path",
        str(inputs.config),
        "--code-version",
        "abc1234",
        "--approval",
        json.dumps(approval) if approval else "",
    ]


def run_register(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    register.add_arguments(parser)
    return register.run(parser.parse_args(argv))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path, saved_model) -> Inputs:
    return write_inputs(tmp_path / "run", saved_model)


def test_a_plain_path_means_an_absolute_sqlite_file_in_an_existing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_tracking_uri("state/mlflow/mlflow.db") == f"sqlite:///{tmp_path}/state/mlflow/mlflow.db"
    assert (tmp_path / "state" / "mlflow").is_dir()
    assert normalize_tracking_uri("registry") == f"sqlite:///{tmp_path}/registry/mlflow.db"
    assert normalize_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_metric_names_are_ones_mlflow_accepts():
    assert metric_name("eval", "payment_type=Cash", "auc") == "eval.payment_type:Cash.auc"
    assert (
        metric_name("eval", "payment_type=Cash&trip_start_day=1", "auc")
        == "eval.payment_type:Cash__trip_start_day:1.auc"
    )
    assert metric_name("eval", "company=Taxi Affiliation, Inc.", "auc") == "eval.company:Taxi Affiliation_ Inc..auc"


def test_a_model_never_registered_is_a_first_model(store):
    baseline = ModelRegistry(store, experiment=EXPERIMENT).find_baseline(MODEL)
    assert (baseline.state, baseline.version, baseline.model_uri) == ("first_model", None, None)
    assert MODEL in baseline.reason


def test_a_blessed_candidate_is_registered_as_challenger_with_its_lineage(store, inputs):
    result = run_register(stage_argv(store, inputs, "scheduled__2017-01-01", APPROVAL))
    assert result["model_version"] == "1"
    assert result["alias"] == "challenger"
    assert result["blessed"] is True
    assert result["tracking_uri"] == f"sqlite:///{store}"

    registry = ModelRegistry(store, experiment=EXPERIMENT)
    assert registry.client.get_model_version_by_alias(MODEL, "challenger").version in ("1", 1)
    lineage = registry.lineage(MODEL, "1")
    assert lineage["run_id"] == result["mlflow_run_id"]
    assert lineage["run_key"] == "scheduled__2017-01-01"
    assert lineage["data_span"] == "2016-12"
    assert lineage["data_fingerprint"] == DATA_FINGERPRINT
    assert lineage["code_version"] == "abc1234"
    assert lineage["schema_sha256"] == _sha256(inputs.schema)
    assert lineage["config_sha256"] == _sha256(inputs.config)
    assert lineage["transform_fingerprint"] == TRANSFORM_FINGERPRINT
    assert lineage["blessing"] == "BLESSED"
    assert lineage["baseline_state"] == "first_model"
    assert lineage["approval"] == APPROVAL
    assert lineage["params"]["learning_rate"] == "0.001"
    assert lineage["params"]["hidden"] == "[16]"
    assert lineage["aliases"] == ["challenger"]
    assert lineage["served"] is False
    assert lineage["version_tags"]["tfpipe.run_key"] == "scheduled__2017-01-01"
    assert lineage["version_tags"]["tfpipe.data_fingerprint"] == DATA_FINGERPRINT
    # The version's files are a copy in the run's artifacts, under the experiment's artifact root.
    source = Path(lineage["source"])
    assert source.parent.parent.parent == Path(store).parent / "artifacts"
    assert source.name == "model" and (source / "saved_model.pb").is_file()

    run = registry.client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["eval.overall.auc"] == 0.92
    assert metrics["eval.payment_type:Cash.auc"] == 0.81
    assert metrics["eval.payment_type:Credit Card.example_count"] == 450
    assert metrics["eval.payment_type:Cash__trip_start_day:1.auc"] == 0.79
    assert metrics["eval_auc"] == 0.915 and metrics["train_seconds"] == 12.5
    assert "chief" not in metrics and "resumed_from_epoch" not in metrics
    losses = registry.client.get_metric_history(run.info.run_id, "loss")
    assert sorted((entry.step, entry.value) for entry in losses) == [(1, 0.52), (2, 0.41)]
    files = {
        item.path
        for folder in ("lineage", "evaluation")
        for item in registry.client.list_artifacts(run.info.run_id, folder)
    }
    assert files == {
        "lineage/schema.pbtxt",
        "lineage/chicago_taxi.yaml",
        "lineage/transform.json",
        "evaluation/metrics.json",
        "evaluation/blessing.json",
    }
    # A challenger is not a champion: the gate still judges the next model as a first one.
    assert registry.find_baseline(MODEL).state == "first_model"


def test_the_same_run_key_reuses_its_run_and_version(store, inputs, tmp_path, saved_model):
    first = run_register(stage_argv(store, inputs, "run_a"))
    again = run_register(stage_argv(store, inputs, "run_a"))
    assert again["mlflow_run_id"] == first["mlflow_run_id"]
    assert again["model_version"] == first["model_version"] == "1"

    registry = ModelRegistry(store, experiment=EXPERIMENT)
    experiment_id = registry.client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert len(registry.client.search_runs([experiment_id])) == 1
    assert len(registry.client.search_model_versions(f"name = '{MODEL}'")) == 1
    # The same values logged again add no history.
    assert len(registry.client.get_metric_history(first["mlflow_run_id"], "loss")) == 2
    assert len(registry.client.get_metric_history(first["mlflow_run_id"], "eval.overall.auc")) == 1

    other = run_register(stage_argv(store, write_inputs(tmp_path / "other", saved_model), "run_b"))
    assert other["model_version"] == "2"
    assert str(registry.client.get_model_version_by_alias(MODEL, "challenger").version) == "2"
    # A rerun of the earlier run points the challenger back at its own version, registering nothing new.
    assert run_register(stage_argv(store, inputs, "run_a"))["model_version"] == "1"
    assert str(registry.client.get_model_version_by_alias(MODEL, "challenger").version) == "1"
    assert len(registry.client.search_model_versions(f"name = '{MODEL}'")) == 2
    assert len(registry.client.search_runs([experiment_id])) == 2


def test_a_candidate_not_blessed_is_recorded_but_not_registered(store, tmp_path, saved_model):
    inputs = write_inputs(tmp_path / "run", saved_model, blessed=False)
    # Nothing is uploaded for a model that is not registered, so its export need not even exist.
    inputs.model = tmp_path / "no-export"
    result = run_register(stage_argv(store, inputs, "run_refused"))
    assert result["blessed"] is False
    assert result["model_version"] is None and result["alias"] is None

    registry = ModelRegistry(store, experiment=EXPERIMENT)
    run = registry.client.get_run(result["mlflow_run_id"])
    assert run.data.tags["tfpipe.blessing"] == "NOT_BLESSED"
    assert run.data.tags["tfpipe.run_key"] == "run_refused"
    assert run.data.metrics["eval.payment_type:Cash.auc"] == 0.71
    assert "tfpipe.approval.approver" not in run.data.tags
    assert list(registry.client.search_model_versions(f"name = '{MODEL}'")) == []
    assert registry.client.list_artifacts(run.info.run_id, "model") == []


def test_the_promoted_champion_is_a_baseline_tensorflow_loads(store, inputs):
    version = run_register(stage_argv(store, inputs, "run_a"))["model_version"]
    registry = ModelRegistry(store, experiment=EXPERIMENT)
    registry.promote_to_champion(MODEL, version)

    baseline = registry.find_baseline(MODEL)
    assert (baseline.state, baseline.version) == ("champion", "1")
    assert baseline.model_uri != str(inputs.model), "the registry serves its own copy, not the run's export"
    scores = tf.saved_model.load(baseline.model_uri).signatures["serving_default"](tf.constant([0.0, 1.0]))
    assert scores["probability"].numpy().tolist() == pytest.approx([0.5, 0.8808], abs=1e-4)
    assert registry.lineage(MODEL, "1")["served"] is True
    assert baseline.to_dict()["state"] == "champion"


def test_a_champion_alias_gone_after_serving_is_missing(store, inputs):
    version = run_register(stage_argv(store, inputs, "run_a"))["model_version"]
    registry = ModelRegistry(store, experiment=EXPERIMENT)
    registry.promote_to_champion(MODEL, version)
    registry.client.delete_registered_model_alias(MODEL, "champion")

    baseline = registry.find_baseline(MODEL)
    assert (baseline.state, baseline.version, baseline.model_uri) == ("missing", None, None)
    assert "version(s) 1" in baseline.reason and "'champion'" in baseline.reason


def test_a_champion_whose_files_are_gone_is_missing(store, inputs):
    version = run_register(stage_argv(store, inputs, "run_a"))["model_version"]
    registry = ModelRegistry(store, experiment=EXPERIMENT)
    registry.promote_to_champion(MODEL, version)
    source = Path(registry.lineage(MODEL, version)["source"])
    shutil.rmtree(source)

    baseline = registry.find_baseline(MODEL)
    assert (baseline.state, baseline.version, baseline.model_uri) == ("missing", "1", None)
    assert f"no SavedModel at {source}" in baseline.reason


def test_a_missing_input_is_named(store, inputs):
    (inputs.evaluation / "blessing.json").unlink()
    with pytest.raises(DataError, match=r"blessing not found: .*evaluation/blessing\.json"):
        run_register(stage_argv(store, inputs, "run_a"))


def test_an_unreachable_registry_is_worth_a_retry(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientError, match=f"MLflow at http://127.0.0.1:{port} could not") as caught:
        ModelRegistry(f"http://127.0.0.1:{port}").find_baseline(MODEL)
    assert caught.value.exit_code == 1


def test_the_stage_command_prints_one_result_line(store, inputs, ml_python):
    argv = [ml_python, "-m", "tfpipe", "register", *stage_argv(store, inputs, "manual__1", APPROVAL)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(RESULT_PREFIX), done.stdout
    result = json.loads(lines[0][len(RESULT_PREFIX) :])
    assert (result["model_version"], result["alias"], result["blessed"]) == ("1", "challenger", True)
    assert result["tracking_uri"] == f"sqlite:///{store}"
    assert "is the challenger" in done.stderr
    registry = ModelRegistry(store, experiment=EXPERIMENT)
    assert registry.lineage(MODEL, "1")["run_id"] == result["mlflow_run_id"]


def _three_versions(store, inputs) -> ModelRegistry:
    for key in ("run_a", "run_b", "run_c"):
        run_register(stage_argv(store, inputs, key))
    return ModelRegistry(store, experiment=EXPERIMENT)


def test_promotions_and_a_rollback_are_recorded_once_each_with_who_when_and_why(store, inputs):
    registry = _three_versions(store, inputs)
    assert registry.promote_to_champion(MODEL, "1", actor="pipeline", run_key="r1") is None
    assert registry.promote_to_champion(MODEL, "2", actor="pipeline", run_key="r2") == "1"
    # A retried promotion task records nothing twice.
    assert registry.promote_to_champion(MODEL, "2", actor="pipeline", run_key="r2") == "1"
    assert registry.record_rollback(MODEL, "1", actor="oncall@example.com", reason="p99 doubled", run_key="rb1") == "2"
    assert registry.record_rollback(MODEL, "1", actor="oncall@example.com", reason="p99 doubled", run_key="rb1") == "2"

    history = registry.deployment_history(MODEL)
    assert [(e["event"], e["version"], e["previous"]) for e in history] == [
        ("promote", "1", None),
        ("promote", "2", "1"),
        ("rollback", "1", "2"),
    ]
    assert history[-1]["by"] == "oncall@example.com" and history[-1]["reason"] == "p99 doubled"
    assert history[-1]["at"].endswith("+00:00")
    assert registry.find_baseline(MODEL).version == "1"
    rolled_back = registry.client.get_model_version(MODEL, "2").tags
    assert rolled_back["tfpipe.rolled_back_reason"] == "p99 doubled"
    assert registry.client.get_model_version(MODEL, "1").tags["tfpipe.restored_by"] == "oncall@example.com"


def test_the_default_rollback_target_is_the_previous_champion(store, inputs):
    registry = _three_versions(store, inputs)
    with pytest.raises(StageError, match="no previous champion"):
        registry.rollback_target(MODEL)
    registry.promote_to_champion(MODEL, "1", run_key="r1")
    with pytest.raises(StageError, match="version 1 is the only one that has served"):
        registry.rollback_target(MODEL)
    registry.promote_to_champion(MODEL, "3", run_key="r3")
    target = registry.rollback_target(MODEL)
    assert target.version == "1"
    assert (Path(target.model_uri) / "saved_model.pb").exists()
    assert registry.rollback_target(MODEL, "2").version == "2"
    with pytest.raises(StageError, match="has no version 9 to roll back to"):
        registry.rollback_target(MODEL, "9")
    with pytest.raises(StageError, match="needs a reason"):
        registry.record_rollback(MODEL, "1", actor="a", reason=" ", run_key="x")


def test_the_deployment_stages_print_their_results(store, inputs, ml_python):
    _three_versions(store, inputs)

    def stage(*argv: str) -> dict:
        done = subprocess.run([ml_python, "-m", "tfpipe", *argv], capture_output=True, text=True, timeout=120)
        line = next((x for x in done.stdout.splitlines() if x.startswith(("TFPIPE_RESULT ", "TFPIPE_ERROR "))), "")
        return {"exit": done.returncode, **json.loads(line.split(" ", 1)[1])}

    common = ("--tracking-uri", store, "--model-name", MODEL)
    assert stage("promote", *common, "--version", "1", "--run-key", "r1")["previous_champion"] is None
    assert stage("promote", *common, "--version", "2", "--run-key", "r2")["previous_champion"] == "1"
    target = stage("rollback-target", *common)
    assert (target["exit"], target["version"], target["champion"]) == (0, "1", "2")
    recorded = stage(
        "record-rollback", *common, "--version", "1", "--actor", "ana", "--reason", "drift", "--run-key", "rb"
    )
    assert (recorded["exit"], recorded["previous_champion"]) == (0, "2") and recorded["recorded_at"]
    refused = stage("rollback-target", *common, "--version", "7")
    assert refused["exit"] == 2 and "no version 7" in refused["message"]
