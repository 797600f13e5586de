"""`invalid_predictions` counts, per model and slice, the examples whose prediction is not a probability."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types

from tfpipe.evaluation import direct_inputs, prediction_check


def inputs(prediction, label=1) -> metric_types.StandardMetricInputs:
    return metric_types.StandardMetricInputs(labels=np.array([label]), predictions=prediction)


@pytest.mark.parametrize(
    ("prediction", "valid"),
    [
        (np.array([0.0], np.float32), True),
        (np.array([1.0], np.float32), True),
        (np.array([0.37]), True),
        (np.array([math.nan], np.float32), False),
        (np.array([math.inf], np.float32), False),
        (np.array([-0.01], np.float32), False),
        (np.array([1.5], np.float32), False),  # a logit
        (np.array([0.2, 0.9]), True),
        (np.array([0.2, math.nan]), False),
        (np.array([], np.float32), False),
        (np.array([b"0.5"], object), False),
        (0.5, True),
    ],
)
def test_what_counts_as_a_probability(prediction, valid):
    assert prediction_check.is_probability(prediction) is valid


def counts(predictions, model_names=("",)) -> dict[str, float]:
    """The metric's value per model over one element per prediction."""
    eval_config = tfma.EvalConfig(model_specs=[tfma.ModelSpec(name=name) for name in model_names])
    out = {}
    for computation in prediction_check.InvalidPredictions().computations(
        eval_config=eval_config, model_names=list(model_names)
    ):
        combiner = computation.combiner
        halves = [combiner.create_accumulator(), combiner.create_accumulator()]
        for i, prediction in enumerate(predictions):
            halves[i % 2] = combiner.add_input(halves[i % 2], inputs(prediction))
        [(key, value)] = combiner.extract_output(combiner.merge_accumulators(halves)).items()
        assert key.name == "invalid_predictions"
        out[key.model_name] = value
    return out


def test_the_count_is_per_model_and_survives_a_merge():
    nan, good, logit = np.array([math.nan], np.float32), np.array([0.4], np.float32), np.array([2.0], np.float32)
    assert counts([good, nan, good, logit, nan]) == {"": 3.0}
    two = [{"candidate": nan, "baseline": good}, {"candidate": logit, "baseline": good}, {"candidate": good}]
    # The third element has no baseline prediction: nothing to count as a probability.
    assert counts(two, ("candidate", "baseline")) == {"candidate": 2.0, "baseline": 1.0}


def test_a_model_with_several_outputs_needs_a_probability_in_each():
    good, nan = np.array([0.4], np.float32), np.array([math.nan], np.float32)
    assert counts([{"a": good, "b": good}, {"a": good, "b": nan}, {}]) == {"": 2.0}


def test_nan_is_left_out_of_the_calibration_histogram_instead_of_failing():
    eval_config = tfma.EvalConfig(model_specs=[tfma.ModelSpec()])
    combiner = direct_inputs.DirectAUC().computations(eval_config=eval_config)[0].combiner
    stock = tfma.metrics.AUC().computations(eval_config=eval_config)[0].combiner
    predictions = [0.1, math.nan, 0.8, 0.6, math.nan]
    ours = combiner.create_accumulator()
    tfmas = stock.create_accumulator()
    for i, prediction in enumerate(predictions):
        element = inputs(np.array([prediction], np.float32), label=i % 2)
        ours = combiner.add_input(ours, element)
        if not math.isnan(prediction):
            tfmas = stock.add_input(tfmas, element)
    with pytest.raises(Exception, match="NaN"):
        stock.add_input(stock.create_accumulator(), inputs(np.array([math.nan], np.float32)))
    [ours_histogram] = combiner.extract_output(ours).values()
    [tfmas_histogram] = stock.extract_output(tfmas).values()
    assert ours_histogram == tfmas_histogram and sum(bucket.weighted_examples for bucket in ours_histogram) == 3
