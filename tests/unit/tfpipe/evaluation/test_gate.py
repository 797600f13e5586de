"""The gate's own rules, on slices as the evaluate stage hands them over (TFMA's thresholds aside)."""

from __future__ import annotations

import pytest

from tests.conftest import CONFIG_PATH
from tfpipe.config import load_pipeline_config
from tfpipe.evaluation import gate


def overall(candidate: dict, examples: int = 100) -> dict:
    return {"slice": "Overall", "features": {}, "examples": examples, "candidate": candidate, "baseline": None}


def payment(kind: str, examples: int, invalid: float) -> dict:
    candidate = {"auc": 0.9, "mean_label": 0.5, "invalid_predictions": invalid}
    return {
        "slice": f"payment_type={kind}",
        "features": {"payment_type": kind},
        "examples": examples,
        "candidate": candidate,
        "baseline": None,
    }


def decide(slices: list[dict]) -> dict:
    config = load_pipeline_config(CONFIG_PATH).evaluation.model_copy(update={"required_slices": []})
    return gate.decide(
        config=config,
        slices=slices,
        baseline=gate.Baseline("first_model"),
        tfma_failures=[],
        tfma_missing_slices=[],
        tfma_missing_thresholds=False,
    )


def test_no_invalid_prediction_and_no_other_reason_is_blessed():
    assert decide([overall({"auc": 0.95, "invalid_predictions": 0.0})])["blessed"] is True


def test_invalid_predictions_are_refused_and_the_slices_with_the_most_are_named():
    slices = [
        overall({"auc": 0.95, "mean_label": 0.5, "invalid_predictions": 30.0}, examples=1000),
        payment("Cash", 400, 25.0),
        payment("Credit Card", 500, 5.0),
        payment("Dispute", 100, 0.0),
    ]
    blessing = decide(slices)
    assert blessing["decision"] == gate.NOT_BLESSED
    [reason] = blessing["reasons"]
    assert "30 of 1,000 examples" in reason
    assert reason.endswith("most on payment_type=Cash (25 of 400), payment_type=Credit Card (5 of 500)")
    [failure] = blessing["failures"]
    assert (failure["slice"], failure["metric"], failure["value"], failure["threshold"]) == (
        "Overall",
        "invalid_predictions",
        30.0,
        0,
    )


def test_predictions_that_were_not_checked_are_not_blessed():
    blessing = decide([overall({"auc": 0.95})])
    assert blessing["blessed"] is False
    assert blessing["reasons"] == ["the candidate's predictions were not checked (no invalid_predictions overall)"]


@pytest.mark.parametrize(
    ("examples", "mean_label", "why"),
    [
        (1000, 0.0, "one class only (mean label 0): AUC is undefined, not judged"),
        (1000, 1.0, "one class only (mean label 1): AUC is undefined, not judged"),
        (49, 0.4, "49 examples, fewer than min_slice_size (50): reported, not judged"),
    ],
)
def test_evaluation_data_that_cannot_be_judged_as_a_whole_is_not_blessed(examples, mean_label, why):
    slices = [
        overall({"auc": None, "mean_label": mean_label, "invalid_predictions": 0.0}, examples=examples),
        payment("Cash", examples, 0.0),
    ]
    blessing = decide(slices)
    assert blessing["blessed"] is False
    assert blessing["reasons"] == [f"the evaluation data as a whole cannot be judged: {why}"]


def test_no_evaluation_data_is_not_blessed():
    blessing = decide([])
    assert blessing["blessed"] is False
    assert blessing["reasons"][0] == "the evaluation data has no examples"
