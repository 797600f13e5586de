"""Our metrics read a binary classifier's label and prediction directly and must give exactly TFMA's values."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types

from tfpipe.evaluation import direct_inputs, log_loss
from tfpipe.evaluation.tfma_eval import METRIC_MODULES, METRICS, TFMA_CLASSES

RNG = np.random.default_rng(7)
LABELS = RNG.integers(0, 2, 300)
PREDICTIONS = RNG.random(300).astype(np.float32)
MODELS = ["candidate", "baseline"]


def one_model(i: int) -> metric_types.StandardMetricInputs:
    """What TFMA hands the combiners for one model: a 1-element label and probability, no weight."""
    return metric_types.StandardMetricInputs(labels=np.array([LABELS[i]]), predictions=PREDICTIONS[i : i + 1])


def two_models(i: int) -> metric_types.StandardMetricInputs:
    """With a baseline: the label and the prediction keyed by model name."""
    return metric_types.StandardMetricInputs(
        labels={model: np.array([LABELS[i]]) for model in MODELS},
        predictions={"candidate": PREDICTIONS[i : i + 1], "baseline": PREDICTIONS[-i - 1 :][:1]},
    )


def other_inputs(i: int) -> metric_types.StandardMetricInputs:
    """What the direct path must leave to TFMA: fractional labels, a prediction keyed by name, a weight."""
    if i % 3 == 0:
        return metric_types.StandardMetricInputs(labels=np.array([0.25]), predictions=PREDICTIONS[i : i + 1])
    if i % 3 == 1:
        return metric_types.StandardMetricInputs(
            labels=np.array([LABELS[i]]), predictions={"probabilities": PREDICTIONS[i : i + 1]}
        )
    return metric_types.StandardMetricInputs(
        labels=np.array([float(LABELS[i])]), predictions=PREDICTIONS[i : i + 1], example_weights=np.array([3.0])
    )


def metric_pairs():
    for ours, (class_name, _) in METRICS.items():
        if class_name in TFMA_CLASSES:
            module = __import__(METRIC_MODULES[class_name], fromlist=[class_name])
            kwargs = {"thresholds": 0.5, "name": ours} if ours in ("precision", "recall") else {}
            ours_class, tfmas_class = getattr(module, class_name), tfma.metrics.__dict__[TFMA_CLASSES[class_name]]
            yield pytest.param(ours_class(**kwargs), tfmas_class(**kwargs), id=ours)


def combiner_outputs(metric, eval_config, model_names, elements) -> dict:
    """Every combiner's output over the elements."""
    outputs = {}
    for computation in metric.computations(eval_config=eval_config, model_names=model_names):
        if isinstance(computation, metric_types.MetricComputation):
            combiner = computation.combiner
            accumulator = combiner.create_accumulator()
            for element in elements:
                accumulator = combiner.add_input(accumulator, element)
            outputs.update(combiner.extract_output(accumulator))
    return outputs


def comparable(value):
    if isinstance(value, list):  # a calibration histogram: its buckets
        return [(b.bucket_id, b.weighted_labels, b.weighted_predictions, b.weighted_examples) for b in value]
    if hasattr(value, "tp"):  # confusion matrices
        return (list(value.thresholds), list(value.tp), list(value.fp), list(value.tn), list(value.fn))
    if hasattr(value, "__slots__"):  # weighted labels, predictions and examples
        return tuple(getattr(value, name) for name in value.__slots__)
    return value


@pytest.mark.parametrize(
    ("inputs", "model_names"),
    [(one_model, [""]), (two_models, MODELS), (other_inputs, [""])],
    ids=["one_model", "two_models", "other_inputs"],
)
@pytest.mark.parametrize(("ours", "tfmas"), list(metric_pairs()))
def test_every_accumulator_equals_tfmas_own(inputs, model_names, ours, tfmas):
    specs = [tfma.ModelSpec(name=model) for model in model_names]
    eval_config = tfma.EvalConfig(model_specs=specs)
    elements = [inputs(i) for i in range(len(LABELS))]
    expected = combiner_outputs(tfmas, eval_config, model_names, elements)
    actual = combiner_outputs(ours, eval_config, model_names, elements)
    assert expected.keys() == actual.keys() and expected
    for key, value in expected.items():
        assert comparable(actual[key]) == comparable(value), key


def test_the_direct_path_is_taken_for_a_binary_classifier_and_not_for_anything_else():
    assert direct_inputs.binary_label_and_prediction(one_model(0), "") is not None
    assert direct_inputs.binary_label_and_prediction(two_models(0), "baseline")[1][0] == PREDICTIONS[-1]
    assert all(direct_inputs.binary_label_and_prediction(other_inputs(i), "") is None for i in range(2))
    computations = direct_inputs.DirectAUC().computations(eval_config=tfma.EvalConfig(model_specs=[tfma.ModelSpec()]))
    assert isinstance(computations[0].combiner, direct_inputs._CalibrationHistogramCombiner)
    [computation] = log_loss.LogLoss().computations(eval_config=tfma.EvalConfig(model_specs=[tfma.ModelSpec()]))
    assert isinstance(computation.combiner, direct_inputs.DirectInputs)


def test_weighted_metrics_take_tfmas_path():
    config = tfma.EvalConfig(model_specs=[tfma.ModelSpec(example_weight_key="w")])
    [computation, *_] = direct_inputs.DirectCalibration().computations(eval_config=config, example_weighted=True)
    combiner = computation.combiner
    element = metric_types.StandardMetricInputs(
        labels=np.array([1]), predictions=np.array([0.5], np.float32), example_weights=np.array([3.0])
    )
    accumulator = combiner.add_input(combiner.create_accumulator(), element)
    assert combiner._direct(element) is None
    assert accumulator.total_weighted_examples == 3.0 and accumulator.total_weighted_labels == 3.0
