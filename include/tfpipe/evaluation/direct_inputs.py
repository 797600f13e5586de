"""TFMA's metrics, with their combiners reading a binary classifier's label and prediction directly.

Every TFMA combiner takes each (slice, example) through `metric_util.to_label_prediction_example_weight`,
which handles every model TFMA supports (model and output lookups, prediction keys, sub keys, top k,
class weights, fractional labels) and costs about 25 µs a call. Four of our metrics' combiners call
it on every example of every slice: half of an evaluation's time.

For what our model gives (one 0/1 label, one probability, no example weights, no sub keys, no class
weights) the combiners here read the two arrays and update TFMA's own accumulators with the
arithmetic TFMA's `add_input` does; any other input takes TFMA's path. The accumulators are TFMA's,
so TFMA's derived metrics (AUC from the calibration histogram, precision and recall from the
confusion matrices, calibration, mean label) and its merges are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorflow_model_analysis.metrics import (
    binary_confusion_matrices,
    calibration,
    calibration_histogram,
    confusion_matrix_metrics,
    metric_types,
)

# The last element read and what was read from it, per model: the combiners of one slice see the same
# element one after another. A tuple is replaced whole, so concurrent bundles cannot see a torn entry.
_last_read: tuple[Any, str, tuple[np.ndarray, np.ndarray] | None] = (None, "", None)


def prediction_of(element: Any, model_name: str) -> Any:
    """The model's prediction: keyed by its name when the metric has one (as TFMA looks it up), or None."""
    prediction = element.prediction
    if model_name:
        return prediction.get(model_name) if isinstance(prediction, Mapping) else None
    return prediction


def binary_label_and_prediction(element: Any, model_name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The (label, prediction) arrays of one example of a binary classifier, or None for anything else.

    Mirrors TFMA's lookups for this case: the prediction is keyed by model name when one is given, the
    label may be. None when either value is a dict (outputs, prediction keys) or not a single number,
    or when the label is not 0 or 1. Example weights are not read: only unweighted metrics come here.
    """
    global _last_read
    last = _last_read
    if last[0] is element and last[1] == model_name:
        return last[2]
    label, prediction = element.label, prediction_of(element, model_name)
    if model_name and isinstance(label, Mapping) and model_name in label:
        label = label[model_name]
    read = None
    if (
        isinstance(label, np.ndarray)
        and isinstance(prediction, np.ndarray)
        and label.shape == (1,)
        and prediction.shape == (1,)
        and label.dtype.kind in "iuf"
        and prediction.dtype.kind == "f"
        and label[0] in (0, 1)
    ):
        read = (label, prediction)
    _last_read = (element, model_name, read)
    return read


class DirectInputs:
    """Mixin for a TFMA combiner: `_direct(element)` is the example's (label, prediction), or None for TFMA's path."""

    def _direct(self, element: Any) -> tuple[np.ndarray, np.ndarray] | None:
        simple = self.__dict__.get("_direct_applies")
        if simple is None:
            # TFMA keeps the key as `_key` or `_metric_key` depending on the combiner.
            key = getattr(self, "_key", None) or self._metric_key
            simple = (
                key.sub_key is None
                and not key.output_name
                and self._aggregation_type is None
                and not self._class_weights
                and not self._example_weighted
            )
            self._direct_applies = simple
            self._direct_model_name = key.model_name
        return binary_label_and_prediction(element, self._direct_model_name) if simple else None


class _CalibrationHistogramCombiner(DirectInputs, calibration_histogram._CalibrationHistogramCombiner):
    def add_input(self, accumulator, element):
        read = self._direct(element)
        if read is None:
            return super().add_input(accumulator, element)
        # A 0/1 label splits into one fractional label of weight 1: the same bucket update as TFMA's.
        label, prediction = float(read[0][0]), float(read[1][0])
        bucketed = prediction if self._prediction_based_bucketing else label
        if bucketed != bucketed:
            # NaN has no bucket (TFMA's own path fails on `int(nan)`): leave it out of the histogram;
            # `invalid_predictions` counts it and the gate refuses the model.
            return accumulator
        index = self._bucket_index(bucketed)
        bucket = accumulator.get(index)
        if bucket is None:
            accumulator[index] = calibration_histogram.Bucket(index, label, prediction, 1.0)
        else:
            bucket.weighted_labels += label
            bucket.weighted_predictions += prediction
            bucket.weighted_examples += 1.0
        return accumulator


class _WeightedLabelsPredictionsExamplesCombiner(DirectInputs, calibration._WeightedLabelsPredictionsExamplesCombiner):
    def add_input(self, accumulator, element):
        read = self._direct(element)
        if read is None:
            return super().add_input(accumulator, element)
        accumulator.total_weighted_examples += 1.0
        accumulator.total_weighted_labels += float(read[0][0])
        accumulator.total_weighted_predictions += float(read[1][0])
        return accumulator


class _BinaryConfusionMatrixCombiner(DirectInputs, binary_confusion_matrices._BinaryConfusionMatrixCombiner):
    def add_input(self, accumulator, element):
        read = None if self._example_id_key else self._direct(element)
        if read is None:
            return super().add_input(accumulator, element)
        return self._binary_confusion_matrices.add_input(
            accumulator=accumulator,
            labels=[read[0].item()],
            predictions=[read[1].item()],
            example_weights=[1.0],
            example_id=None,
        )


DIRECT_COMBINERS = {
    calibration_histogram._CalibrationHistogramCombiner: _CalibrationHistogramCombiner,
    calibration._WeightedLabelsPredictionsExamplesCombiner: _WeightedLabelsPredictionsExamplesCombiner,
    binary_confusion_matrices._BinaryConfusionMatrixCombiner: _BinaryConfusionMatrixCombiner,
}


def with_direct_combiners(computations: metric_types.MetricComputations) -> metric_types.MetricComputations:
    """The same computations, each TFMA combiner we have a direct version of switched to it (same state)."""
    for computation in computations:
        if isinstance(computation, metric_types.MetricComputation):
            direct = DIRECT_COMBINERS.get(type(computation.combiner))
            if direct is not None:
                computation.combiner.__class__ = direct
    return computations


class _Direct:
    def computations(self, *args: Any, **kwargs: Any) -> metric_types.MetricComputations:
        return with_direct_combiners(super().computations(*args, **kwargs))


# Named apart from TFMA's classes: TFMA resolves a registered class name before a config's `module`.
class DirectAUC(_Direct, confusion_matrix_metrics.AUC):
    """TFMA's `AUC` (reported as `auc`)."""


class DirectPrecision(_Direct, confusion_matrix_metrics.Precision):
    """TFMA's `Precision` (reported as `precision`)."""


class DirectRecall(_Direct, confusion_matrix_metrics.Recall):
    """TFMA's `Recall` (reported as `recall`)."""


class DirectCalibration(_Direct, calibration.Calibration):
    """TFMA's `Calibration` (reported as `calibration`)."""


class DirectMeanLabel(_Direct, calibration.MeanLabel):
    """TFMA's `MeanLabel` (reported as `mean_label`)."""
