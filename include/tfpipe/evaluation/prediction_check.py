"""`invalid_predictions`: how many examples a model gave something other than a probability.

A model whose training diverged predicts NaN; one exported without its sigmoid predicts logits. TFMA
has no metric for it: NaN crashes its calibration histogram (`int(nan)`), and values outside [0, 1]
fall into the histogram's edge buckets and give an AUC that looks plausible. This metric counts, per
model and slice, the examples whose prediction is NaN, infinite, outside [0, 1] or not a number, so
the gate can refuse the model and say why, instead of a Beam stack trace or a quiet pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util

from tfpipe.evaluation.direct_inputs import prediction_of

NAME = "invalid_predictions"


def is_probability(values: Any) -> bool:
    """Whether there are values and every one is a number in [0, 1] (NaN fails both comparisons)."""
    if isinstance(values, np.ndarray) and values.shape == (1,) and values.dtype.kind == "f":
        return bool(0.0 <= values[0] <= 1.0)  # the common case, without the array arithmetic
    array = np.asarray(values)
    if array.dtype.kind not in "iuf" or not array.size:  # text, objects, nothing
        return False
    return bool(np.all((array >= 0) & (array <= 1)))


class _Combiner(beam.CombineFn):
    def __init__(self, key: metric_types.MetricKey):
        self._key = key

    def create_accumulator(self) -> int:
        return 0

    def add_input(self, accumulator: int, element: metric_types.StandardMetricInputs) -> int:
        prediction = prediction_of(element, self._key.model_name)
        if isinstance(prediction, Mapping):  # several outputs: every one must be a probability
            valid = bool(prediction) and all(is_probability(value) for value in prediction.values())
        else:
            valid = prediction is not None and is_probability(prediction)
        return accumulator if valid else accumulator + 1

    def merge_accumulators(self, accumulators: Iterable[int]) -> int:
        return sum(accumulators)

    def extract_output(self, accumulator: int) -> dict[metric_types.MetricKey, float]:
        return {self._key: float(accumulator)}


def _computations(
    name: str = NAME,
    eval_config=None,
    model_name: str = "",
    output_name: str = "",
    example_weighted: bool = False,
    sub_key=None,
    aggregation_type=None,
    class_weights=None,
) -> metric_types.MetricComputations:
    # A count of examples: example weights do not apply, so only the unweighted key is computed.
    if example_weighted:
        return []
    key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name)
    return [metric_types.MetricComputation(keys=[key], preprocessors=None, combiner=_Combiner(key))]


class InvalidPredictions(metric_types.Metric):
    """Examples whose prediction is not a probability: NaN, infinite, outside [0, 1] or not a number."""

    def __init__(self, name: str = NAME):
        super().__init__(metric_util.merge_per_key_computations(_computations), name=name)
