"""The log loss metric that replaces TFMA's: same values from one partial result, right values from several."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import cross_entropy_metrics, metric_specs, metric_types

from tfpipe.evaluation import log_loss

# Three partial results, as three Beam bundles (or workers) would produce them for one slice.
GROUPS = [[(1, 0.9), (0, 0.2)], [(1, 0.6), (1, 0.7), (0, 0.1)], [(0, 0.4)]]


def exact(groups) -> float:
    pairs = [pair for group in groups for pair in group]
    return -sum(y * math.log(p) + (1 - y) * math.log(1 - p) for y, p in pairs) / len(pairs)


def merged(combiner, groups) -> float:
    accumulators = []
    for group in groups:
        accumulator = combiner.create_accumulator()
        for label, prediction in group:
            inputs = metric_types.StandardMetricInputs(
                labels=np.array([float(label)]), predictions=np.array([prediction]), example_weights=np.array([1.0])
            )
            accumulator = combiner.add_input(accumulator, inputs)
        accumulators.append(accumulator)
    [value] = combiner.extract_output(combiner.merge_accumulators(accumulators)).values()
    return float(value)


def combiner_of(metric) -> object:
    [computation] = metric.computations(eval_config=tfma.EvalConfig(model_specs=[tfma.ModelSpec()]))
    return computation.combiner


def test_partial_results_merge_to_the_log_loss_of_all_examples():
    assert merged(combiner_of(log_loss.LogLoss()), GROUPS) == pytest.approx(exact(GROUPS), abs=1e-12)


def test_one_partial_result_gives_what_tfmas_own_metric_gives():
    ours = merged(combiner_of(log_loss.LogLoss()), [GROUPS[1]])
    assert ours == merged(combiner_of(cross_entropy_metrics.BinaryCrossEntropy()), [GROUPS[1]])
    assert ours == pytest.approx(exact([GROUPS[1]]), abs=1e-12)


def test_tfmas_own_metric_still_counts_the_first_partial_result_twice():
    """While this holds, the replacement is needed; when TFMA fixes its merge, this fails and LogLoss can go."""
    first_twice = [GROUPS[0], *GROUPS]
    stock = merged(combiner_of(cross_entropy_metrics.BinaryCrossEntropy()), GROUPS)
    assert stock == pytest.approx(exact(first_twice), abs=1e-12)
    assert abs(stock - exact(GROUPS)) > 0.01


def test_it_reports_under_tfmas_name_and_is_found_by_module_not_by_tfmas_registry():
    from tfpipe.evaluation import tfma_eval

    assert log_loss.LogLoss().name == "binary_crossentropy" == tfma_eval.METRICS["log_loss"][1]
    assert "LogLoss" not in metric_types.registered_metrics()
    config = tfma_eval.eval_config(
        tfma_eval.EvaluationConfig.model_validate({"model_name": "m", "thresholds": {}}), [], with_baseline=False
    )
    [metric] = [m for m in config.metrics_specs[0].metrics if m.class_name == "LogLoss"]
    assert metric.module == "tfpipe.evaluation.log_loss"
    assert isinstance(metric_specs.metric_instance(metric), log_loss.LogLoss)
