"""The deployment gate on real models and the real 2016 holdout: TFMA on Beam, then the blessing."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from tests.conftest import CONFIG_PATH
from tfpipe.config import EvaluationConfig, Hyperparameters, load_pipeline_config
from tfpipe.data.split import split_files
from tfpipe.stages import evaluate
from tfpipe.stages.transform import load_transform


def _train(window, output: Path, **hyperparameters) -> str:
    from tfpipe.training import trainer

    config = load_pipeline_config(CONFIG_PATH).training
    files, rows = split_files(str(window.splits), ("train", "validation"))
    eval_files, _ = split_files(str(window.splits), ("eval",))
    job = trainer.TrainingJob(
        train_files=files,
        train_rows=rows,
        score_files=eval_files,
        score_name="eval",
        transform=load_transform(str(window.transform)),
        hyperparameters=Hyperparameters.model_validate({**config.hyperparameters.model_dump(), **hyperparameters}),
        seed=config.seed,
        checkpoint_dir=None,
        tensorboard_dir=None,
        export=True,
        export_dir=str(output),
    )
    trainer.train(job)
    return str(output / "saved_model")


@pytest.fixture(scope="module")
def good_model(window, tmp_path_factory) -> str:
    return _train(window, tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def poor_model(window, tmp_path_factory) -> str:
    # One epoch at a learning rate 100x too small: a model that has barely started learning.
    return _train(window, tmp_path_factory.mktemp("poor"), epochs=1, learning_rate=1e-5, hidden=[4], wide=False)


def _config(**changes) -> EvaluationConfig:
    values = load_pipeline_config(CONFIG_PATH).evaluation.model_dump()
    values.update(changes)
    return EvaluationConfig.model_validate(values)


def _evaluate(window, tmp_path: Path, candidate: str, config: EvaluationConfig, baseline: str | None = None) -> dict:
    return evaluate.run(
        argparse.Namespace(
            eval_uri=str(window.splits / "eval"),
            candidate_uri=candidate,
            output_uri=str(tmp_path / "evaluation"),
            config=config.model_dump_json(),
            tracking_uri=None,
            baseline_uri=baseline,
        )
    )


def _blessing(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "evaluation" / "blessing.json").read_text())


def test_a_good_first_model_is_blessed_on_value_thresholds(window, good_model, tmp_path):
    result = _evaluate(window, tmp_path, good_model, _config())
    assert result["blessed"] is True and result["decision"] == "BLESSED", result["reasons"]
    assert result["baseline_state"] == "first_model"
    assert result["auc"] >= 0.9
    blessing = _blessing(tmp_path)
    assert blessing["reasons"] == [] and blessing["thresholds_configured"] == 7
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    names = {s["slice"] for s in metrics["slices"]}
    assert {"Overall", "payment_type=Cash", "payment_type=Credit Card", "trip_start_day=1"} <= names
    assert "payment_type=Cash & trip_start_day=1" in names, "the configured cross"
    assert sum(name.startswith("company=") for name in names) == 5, "the five most frequent companies"
    not_judged = {entry["slice"]: entry["reason"] for entry in blessing["not_judged"]}
    assert "one class only" in not_judged["payment_type=Cash"], "cash trips record no tips: no AUC"
    assert any("fewer than min_slice_size (50)" in reason for reason in not_judged.values())
    assert (tmp_path / "evaluation" / "report.html").stat().st_size > 0
    assert {entry["candidate"]["invalid_predictions"] for entry in metrics["slices"]} == {0.0}


def test_a_worse_candidate_is_not_blessed_and_the_failing_slices_are_named(window, poor_model, tmp_path):
    result = _evaluate(window, tmp_path, poor_model, _config())
    assert result["blessed"] is False and result["decision"] == "NOT_BLESSED"
    failures = {(f["slice"], f["metric"]) for f in _blessing(tmp_path)["failures"]}
    assert ("Overall", "auc") in failures
    assert any(slice_.startswith("trip_start_day=") for slice_, _ in failures), "slices fail too, by name"
    assert any(
        reason.startswith("auc ") and "on Overall is below the minimum 0.9" in reason for reason in result["reasons"]
    )
    assert not any(f["slice"] == "payment_type=Cash" for f in _blessing(tmp_path)["failures"]), "not judged"


def _reexported(model_uri: str, output: Path, outputs, extra_inputs=None, signature="serving_default") -> str:
    """The model re-exported to serve `outputs(features, probabilities)`, taking `extra_inputs` too."""
    import tensorflow as tf

    loaded = tf.saved_model.load(model_uri)
    serving = loaded.signatures["serving_default"]
    _, spec = serving.structured_input_signature
    module = tf.Module()
    module.model = loaded

    @tf.function(input_signature=[{**spec, **(extra_inputs or {})}])
    def serve(features):
        inputs = {name: tf.cast(features[name], spec[name].dtype) for name in spec}  # a changed input type
        return outputs(features, serving(**inputs)["probabilities"])

    tf.saved_model.save(module, str(output), signatures={signature: serve})
    return str(output)


def _serving_changed(model_uri: str, output: Path, change) -> str:
    """The model re-exported with `change(features, probabilities)` applied to what it serves."""
    return _reexported(model_uri, output, lambda features, p: {"probabilities": change(features, p)})


def _nan_everywhere(features, probabilities):  # training that diverged
    return probabilities * float("nan")


def _logits(features, probabilities):  # exported without its sigmoid
    import tensorflow as tf

    return tf.math.log(probabilities / (1.0 - probabilities))


@pytest.mark.parametrize("change", [_nan_everywhere, _logits], ids=["nan", "logits"])
def test_a_candidate_that_does_not_predict_probabilities_is_not_blessed_and_says_so(
    window, good_model, tmp_path, change
):
    candidate = _serving_changed(good_model, tmp_path / "candidate", change)
    result = _evaluate(window, tmp_path, candidate, _config(), baseline=good_model)
    assert result["blessed"] is False
    overall = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["slices"][0]
    invalid = overall["candidate"]["invalid_predictions"]
    assert overall["baseline"]["invalid_predictions"] == 0
    said = (
        "the candidate's prediction is not a probability (NaN, infinite or outside [0, 1]) for "
        f"{invalid:,.0f} of {overall['examples']:,} examples"
    )
    if change is _nan_everywhere:
        assert invalid == overall["examples"] and result["reasons"][0] == said
    else:  # a logit is in [0, 1] only where the probability is in [0.5, 0.731]
        assert 0 < invalid < overall["examples"] and result["reasons"][0].startswith(said + ", most on ")
    failure = _blessing(tmp_path)["failures"][0]
    assert (failure["metric"], failure["value"], failure["baseline_value"]) == ("invalid_predictions", invalid, 0)


def test_predictions_missing_on_some_inputs_name_the_slices_they_are_in(window, good_model, tmp_path):
    def nan_for_cash(features, probabilities):  # e.g. a feature path that divides by zero
        import tensorflow as tf

        return tf.where(features["payment_type"] == "Cash", float("nan"), probabilities)

    candidate = _serving_changed(good_model, tmp_path / "candidate", nan_for_cash)
    result = _evaluate(window, tmp_path, candidate, _config())
    slices = {s["slice"]: s for s in json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["slices"]}
    cash = slices["payment_type=Cash"]
    assert cash["candidate"]["invalid_predictions"] == cash["examples"] > 0
    assert slices["payment_type=Credit Card"]["candidate"]["invalid_predictions"] == 0
    assert result["blessed"] is False
    assert (
        f"for {cash['examples']:,} of {slices['Overall']['examples']:,} examples, "
        f"most on payment_type=Cash ({cash['examples']:,} of {cash['examples']:,})"
    ) in result["reasons"][0]


def _signature_cases():
    import tensorflow as tf

    yield "scores", {"outputs": lambda features, p: {"scores": p}}, "its serving_default gives no probabilities"
    yield "rounded", {"outputs": lambda features, p: {"probabilities": tf.cast(p > 0.5, tf.int64)}}, "as int64"
    extra = {"driver_rating": tf.TensorSpec([None], tf.float32, name="driver_rating")}
    yield (
        "extra input",
        {"outputs": lambda features, p: {"probabilities": p}, "extra_inputs": extra},
        "takes driver_rating, which the evaluation data does not have",
    )
    wrong_type = {"trip_start_hour": tf.TensorSpec([None], tf.float32, name="trip_start_hour")}
    yield (
        "input type",
        {"outputs": lambda features, p: {"probabilities": p}, "extra_inputs": wrong_type},
        "takes trip_start_hour as float32 (the data gives int64)",
    )
    yield (
        "no serving_default",
        {"outputs": lambda features, p: {"probabilities": p}, "signature": "predict"},
        "no serving_default signature (it has: predict)",
    )


def test_a_candidate_that_cannot_score_the_data_is_refused_with_the_reason(window, good_model, tmp_path):
    from tfpipe.errors import DataError

    for name, changes, reason in _signature_cases():
        candidate = _reexported(good_model, tmp_path / name, **changes)
        with pytest.raises(DataError, match=f"the candidate cannot score the held-out data: .*{re.escape(reason)}"):
            _evaluate(window, tmp_path, candidate, _config())
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(DataError, match=r"not a SavedModel \(no saved_model.pb\)"):
        _evaluate(window, tmp_path, str(not_a_model), _config())
    assert not (tmp_path / "evaluation").exists()


def test_a_champion_that_cannot_score_the_data_means_not_blessed(window, good_model, tmp_path):
    champion = _reexported(good_model, tmp_path / "champion", lambda features, p: {"scores": p})
    result = _evaluate(window, tmp_path, good_model, _config(), baseline=champion)
    assert result["blessed"] is False and result["baseline_state"] == "missing"
    assert result["reasons"] == [
        f"the champion to compare with is missing: the champion {champion} cannot score the held-out data: "
        "its serving_default gives no probabilities (it gives: scores)"
    ]


def test_a_candidate_worse_than_the_champion_fails_the_change_threshold(window, good_model, poor_model, tmp_path):
    config = _config(thresholds={"overall": {"auc": {"max_drop": 0.01}}})
    result = _evaluate(window, tmp_path, poor_model, config, baseline=good_model)
    assert result["blessed"] is False and result["baseline_state"] == "champion"
    [failure] = _blessing(tmp_path)["failures"]
    assert failure["kind"] == "change" and failure["bound"] == "max_drop" and failure["slice"] == "Overall"
    assert failure["baseline_value"] > failure["value"]
    assert "below the champion's" in result["reasons"][0]


def test_the_same_model_as_the_champion_passes_its_change_threshold(window, good_model, tmp_path):
    config = _config(thresholds={"overall": {"auc": {"max_drop": 0.01}, "log_loss": {"max_rise": 0.0}}})
    result = _evaluate(window, tmp_path, good_model, config, baseline=good_model)
    assert result["blessed"] is True, result["reasons"]
    overall = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["slices"][0]
    assert overall["baseline"]["auc"] == overall["candidate"]["auc"]


def test_with_no_thresholds_nothing_is_blessed(window, good_model, tmp_path):
    result = _evaluate(window, tmp_path, good_model, _config(thresholds={}))
    assert result["blessed"] is False
    assert result["reasons"] == [
        "no thresholds are configured (evaluation.thresholds): nothing is blessed without them"
    ]


def test_a_required_slice_missing_from_the_data_means_not_blessed(window, good_model, tmp_path):
    result = _evaluate(window, tmp_path, good_model, _config(required_slices=["payment_type=Bitcoin"]))
    assert result["blessed"] is False
    assert result["reasons"] == ["required slice payment_type=Bitcoin has no examples in the evaluation data"]


def test_a_champion_that_cannot_be_found_means_not_blessed(window, good_model, tmp_path):
    result = _evaluate(window, tmp_path, good_model, _config(), baseline=str(tmp_path / "gone"))
    assert result["blessed"] is False and result["baseline_state"] == "missing"
    assert "the champion to compare with is missing" in result["reasons"][0]


def test_a_candidate_that_does_not_exist_is_refused(window, tmp_path):
    from tfpipe.errors import DataError

    with pytest.raises(DataError, match="the candidate model does not exist"):
        _evaluate(window, tmp_path, str(tmp_path / "nope"), _config())
    assert not (tmp_path / "evaluation").exists()


def test_thresholds_on_a_feature_that_is_not_sliced_are_refused():
    with pytest.raises(ValueError, match=r"thresholds.per_slice names \['pickup_community_area'\]"):
        _config(thresholds={"per_slice": {"pickup_community_area": {"auc": {"min": 0.5}}}})


def test_the_registrys_champion_is_the_baseline_of_the_next_candidate(window, good_model, poor_model, tmp_path):
    """Evaluate, register as challenger, promote to champion; the next evaluation finds it in the registry."""
    from tfpipe.registry.mlflow_registry import ModelRegistry
    from tfpipe.stages import register

    tracking = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    config = _config()
    first = _evaluate(window, tmp_path / "first", good_model, config)
    assert first["blessed"] and first["baseline_state"] == "first_model"
    (tmp_path / "training.json").write_text(json.dumps({"hyperparameters": {"epochs": 8}, "eval_auc": first["auc"]}))
    registered = register.run(
        argparse.Namespace(
            tracking_uri=tracking,
            artifact_root=str(tmp_path / "mlflow" / "artifacts"),
            experiment="chicago_taxi",
            model_name=config.model_name,
            run_key="scheduled__2016-12-01",
            model_uri=good_model,
            training_metrics_uri=str(tmp_path / "training.json"),
            evaluation_uri=first["evaluation_uri"],
            splits_uri=str(window.splits),
            transform_uri=str(window.transform),
            schema_path=str(load_pipeline_config(CONFIG_PATH).validation.schema_path),
            config_path=str(CONFIG_PATH),
            code_version="git:test",
            approval='{"mode": "auto"}',
        )
    )
    assert registered["model_version"] == "1" and registered["alias"] == "challenger"
    ModelRegistry(tracking).promote_to_champion(config.model_name, "1")

    second = evaluate.run(
        argparse.Namespace(
            eval_uri=str(window.splits / "eval"),
            candidate_uri=poor_model,
            output_uri=str(tmp_path / "second" / "evaluation"),
            config=config.model_dump_json(),
            tracking_uri=tracking,
            baseline_uri=None,
        )
    )
    assert second["baseline_state"] == "champion" and second["blessed"] is False
    blessing = json.loads((tmp_path / "second" / "evaluation" / "blessing.json").read_text())
    assert blessing["baseline"]["version"] == "1"
    assert any(f["kind"] == "change" and f["slice"] == "Overall" and f["metric"] == "auc" for f in blessing["failures"])


def _exact_log_loss_by_payment_type(csv_path: str, model_uri: str) -> dict[str, float]:
    """Log loss from the model's own predictions, in numpy: what TFMA must report, however Beam splits the work."""
    import numpy as np
    import tensorflow as tf

    from tfpipe.evaluation import tfma_eval

    serve = tf.saved_model.load(model_uri).signatures["serving_default"]
    inputs = serve.structured_input_signature[1]
    labels, predictions, payment_types = [], [], []
    for batch in tfma_eval.record_batches(csv_path, 500):
        columns = {name: batch.column(name).flatten().to_numpy(zero_copy_only=False) for name in batch.schema.names}
        features = {
            name: tf.constant(columns[name].reshape([-1] + [1] * (len(spec.shape) - 1)), dtype=spec.dtype)
            for name, spec in inputs.items()
        }
        predictions.append(serve(**features)["probabilities"].numpy().reshape(-1).astype(np.float64))
        labels.append(columns["big_tipper"].astype(np.float64))
        payment_types.append(np.array([value.decode() for value in columns["payment_type"]]))
    y, p, payment = np.concatenate(labels), np.concatenate(predictions), np.concatenate(payment_types)
    p = np.clip(p, 1e-7, 1 - 1e-7)  # Keras' epsilon, as TFMA's metric uses
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    exact = {"Overall": float(loss.mean())}
    exact.update({f"payment_type={value}": float(loss[payment == value].mean()) for value in set(payment)})
    return exact


def test_two_beam_workers_report_the_metrics_of_one_and_the_exact_log_loss(window, good_model, tmp_path):
    """The shipped Beam options split the work over two processes; partial results must merge to the same numbers."""
    from tfpipe.artifacts import csv_files
    from tfpipe.evaluation import tfma_eval

    # Nine batches of the 833 rows, so both workers get some; this small input would otherwise stay in one process.
    shipped = _config(batch_size=100, in_process_below_rows=0)
    assert {"--direct_running_mode=multi_processing", "--direct_num_workers=2"} <= set(shipped.beam_pipeline_args)
    one_process = _config(batch_size=100, beam_pipeline_args=["--runner=DirectRunner"])
    [csv_path] = csv_files(str(window.splits / "eval"), "eval_uri")
    companies = tfma_eval.top_values(csv_path, "company", shipped.slices.top_companies)
    metrics = {}
    for name, config in (("two_workers", shipped), ("one_process", one_process)):
        tfma_eval.run_evaluation(
            csv_path=csv_path,
            candidate_uri=good_model,
            baseline_uri=None,
            config=config,
            companies=companies,
            output_dir=tmp_path / name,
        )
        metrics[name] = {s["slice"]: s["candidate"] for s in tfma_eval.load_slice_metrics(tmp_path / name)}

    assert metrics["two_workers"].keys() == metrics["one_process"].keys()
    for slice_name, values in metrics["two_workers"].items():
        assert values.keys() == metrics["one_process"][slice_name].keys()
        for metric, value in values.items():
            other = metrics["one_process"][slice_name][metric]
            same = value is other is None or (None not in (value, other) and value == pytest.approx(other, abs=2e-6))
            assert same, (slice_name, metric, value, other)
    exact = _exact_log_loss_by_payment_type(csv_path, good_model)
    for slice_name, log_loss in exact.items():
        assert metrics["two_workers"][slice_name]["log_loss"] == pytest.approx(log_loss, abs=2e-6), slice_name


def test_our_metrics_equal_tfmas_own_on_every_slice_for_candidate_and_champion(
    window, good_model, poor_model, tmp_path, monkeypatch
):
    """Our metric classes read labels and predictions directly; TFMA's read them its general way."""
    from tfpipe.artifacts import csv_files
    from tfpipe.evaluation import tfma_eval

    config = _config(batch_size=100)
    [csv_path] = csv_files(str(window.splits / "eval"), "eval_uri")
    companies = tfma_eval.top_values(csv_path, "company", config.slices.top_companies)
    ours = dict(tfma_eval.METRICS)
    tfmas = {name: (tfma_eval.TFMA_CLASSES.get(cls, cls), reported) for name, (cls, reported) in ours.items()}
    assert tfmas != ours
    slices = {}
    for name, metrics in (("ours", ours), ("tfmas", tfmas)):
        monkeypatch.setattr(tfma_eval, "METRICS", metrics)
        tfma_eval.run_evaluation(
            csv_path=csv_path,
            candidate_uri=good_model,
            baseline_uri=poor_model,
            config=config,
            companies=companies,
            output_dir=tmp_path / name,
        )
        slices[name] = tfma_eval.load_slice_metrics(tmp_path / name)
    assert len(slices["ours"]) > 20
    overall = slices["ours"][0]
    assert overall["slice"] == "Overall" and overall["baseline"]["auc"] < overall["candidate"]["auc"] - 0.05
    assert slices["ours"] == slices["tfmas"]
