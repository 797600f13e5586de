"""Log loss (binary cross-entropy) as a TFMA metric whose partial results merge correctly.

TFMA 0.47's `BinaryCrossEntropy` merges accumulators with `result = next(iter(accs))` followed by
`for acc in accs: result.merge(acc)`. Given a list, the loop starts again at the first accumulator,
so that one is counted twice. A single-process DirectRunner merges one partial result per slice and
hides it; two Beam workers (or Dataflow) merge several, and the log loss moves by up to 0.14 on
small slices. Same metric name, same per-example arithmetic: only the merge differs (and, as for
our other metrics, a binary classifier's label and prediction are read directly: `direct_inputs`).
"""

from __future__ import annotations

from collections.abc import Iterable

from tensorflow_model_analysis.metrics import cross_entropy_metrics, metric_types, metric_util

from tfpipe.evaluation.direct_inputs import DirectInputs

NAME = cross_entropy_metrics.BINARY_CROSSENTROPY_NAME


class _Combiner(DirectInputs, cross_entropy_metrics._BinaryCrossEntropyCombiner):
    def add_input(self, accumulator, element):
        read = self._direct(element)
        if read is None:
            return super().add_input(accumulator, element)
        # TFMA's arithmetic on the same two arrays; without example weights the weight is 1.
        accumulator.total_cross_entropy += self._cross_entropy(*read) * 1.0
        accumulator.total_example_weights += 1.0
        return accumulator

    def merge_accumulators(self, accumulators: Iterable) -> object:
        remaining = iter(accumulators)
        result = next(remaining)
        for accumulator in remaining:
            result.merge(accumulator)
        return result


def _computations(
    name: str = NAME,
    eval_config=None,
    model_name: str | None = None,
    output_name: str | None = None,
    example_weighted: bool = False,
    sub_key=None,
    aggregation_type=None,
    class_weights=None,
) -> metric_types.MetricComputations:
    key = metric_types.MetricKey(
        name=name,
        model_name=model_name,
        output_name=output_name,
        sub_key=sub_key,
        example_weighted=example_weighted,
    )
    combiner = _Combiner(
        eval_config=eval_config,
        model_name=model_name,
        output_name=output_name,
        metric_key=key,
        aggregation_type=aggregation_type,
        class_weights=class_weights,
        example_weighted=example_weighted,
    )
    return [metric_types.MetricComputation(keys=[key], preprocessors=None, combiner=combiner)]


# Named apart from TFMA's class: TFMA resolves a registered class name before a config's `module`.
class LogLoss(metric_types.Metric):
    """TFMA's binary cross-entropy, reported as `binary_crossentropy`, merged without double counting."""

    def __init__(self, name: str = NAME):
        super().__init__(metric_util.merge_per_key_computations(_computations), name=name)
