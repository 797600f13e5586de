"""Sliced evaluation of a candidate (and the champion) with TensorFlow Model Analysis, on Beam.

The `EvalConfig` is built from the pipeline config: slices (overall, each configured feature, the
most frequent companies, crosses), metrics (AUC, precision and recall at the operating threshold,
calibration, log loss, example count, mean label; and `invalid_predictions`, which the gate reads)
and thresholds: value thresholds always, change thresholds against the champion when there is one.

Rows reach TFMA as Arrow record batches built here from the CSV, with the model's missing-value
defaults (NaN, -1, ""): TFMA passes features to the serving signature as they are, and an empty
cell would otherwise become a null the signature cannot take. The CSV is read in chunks inside the
pipeline, so memory does not grow with the data.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow_model_analysis as tfma
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from tfpipe import artifacts
from tfpipe.config import HIGHER_IS_BETTER, EvaluationConfig, MetricBounds
from tfpipe.training import model as m

log = logging.getLogger(__name__)

CANDIDATE, BASELINE = "candidate", "baseline"
OVERALL = "Overall"
# Our metric names -> metric class and the name TFMA reports it under.
METRICS: dict[str, tuple[str, str]] = {
    "auc": ("DirectAUC", "auc"),
    "precision": ("DirectPrecision", "precision"),
    "recall": ("DirectRecall", "recall"),
    "calibration": ("DirectCalibration", "calibration"),
    "log_loss": ("LogLoss", "binary_crossentropy"),
    "example_count": ("ExampleCount", "example_count"),
    "mean_label": ("DirectMeanLabel", "mean_label"),
}
# Checks on what a model gives, always computed; TFMA has no class for them, and the gate reads them.
CHECKS: dict[str, tuple[str, str]] = {"invalid_predictions": ("InvalidPredictions", "invalid_predictions")}
# Classes of our own, by the module TFMA imports them from (in every Beam worker), and the TFMA class
# each one computes the metric of.
METRIC_MODULES = {
    **dict.fromkeys(
        ("DirectAUC", "DirectPrecision", "DirectRecall", "DirectCalibration", "DirectMeanLabel"),
        "tfpipe.evaluation.direct_inputs",
    ),
    "LogLoss": "tfpipe.evaluation.log_loss",
    "InvalidPredictions": "tfpipe.evaluation.prediction_check",
}
TFMA_CLASSES = {
    "DirectAUC": "AUC",
    "DirectPrecision": "Precision",
    "DirectRecall": "Recall",
    "DirectCalibration": "Calibration",
    "DirectMeanLabel": "MeanLabel",
    "LogLoss": "BinaryCrossEntropy",
}
TFMA_NAMES = {tfma_name: ours for ours, (_, tfma_name) in {**METRICS, **CHECKS}.items()}


def slice_name(features: dict[str, Any]) -> str:
    """ "Overall", "payment_type=Cash", or "payment_type=Cash & trip_start_day=3"."""
    return " & ".join(f"{key}={value}" for key, value in features.items()) if features else OVERALL


def slice_group(features: dict[str, Any]) -> str:
    """The per_slice key a slice's thresholds are configured under: "payment_type", or "a&b" for a cross."""
    return "&".join(features)


def top_values(csv_path: str, column: str, count: int) -> list[str]:
    """The `count` most frequent non-empty values of a column (ties by name, for a stable config)."""
    counts: dict[str, int] = {}
    for chunk in pd.read_csv(csv_path, usecols=[column], dtype=str, chunksize=100_000, keep_default_na=False):
        for value, n in chunk[column].value_counts().items():
            if value:
                counts[value] = counts.get(value, 0) + int(n)
    return [value for value, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:count]]


def _model_spec(name: str, baseline: bool) -> tfma.ModelSpec:
    # The model type and signature are named: TFMA's own detection would load the model an extra time
    # and pick a code path by whichever Keras `tf.keras` happens to mean.
    return tfma.ModelSpec(
        name=name,
        model_type=tfma.TF_GENERIC,
        signature_name="serving_default",
        label_key=m.LABEL,
        prediction_key="probabilities",
        is_baseline=baseline,
    )


def _threshold(metric: str, bounds: MetricBounds, with_change: bool) -> tfma.MetricThreshold | None:
    threshold = tfma.MetricThreshold()
    if bounds.min is not None or bounds.max is not None:
        value = tfma.GenericValueThreshold()
        if bounds.min is not None:
            value.lower_bound.value = bounds.min
        if bounds.max is not None:
            value.upper_bound.value = bounds.max
        threshold.value_threshold.CopyFrom(value)
    change = bounds.max_drop if metric in HIGHER_IS_BETTER else bounds.max_rise
    if with_change and change is not None:
        direction = (
            tfma.MetricDirection.HIGHER_IS_BETTER
            if metric in HIGHER_IS_BETTER
            else tfma.MetricDirection.LOWER_IS_BETTER
        )
        # TFMA checks candidate - baseline against `absolute`: at least -max_drop, or at most +max_rise.
        absolute = -change if metric in HIGHER_IS_BETTER else change
        threshold.change_threshold.CopyFrom(
            tfma.GenericChangeThreshold(direction=direction, absolute={"value": absolute})
        )
    if not threshold.HasField("value_threshold") and not threshold.HasField("change_threshold"):
        return None
    return threshold


def slicing_specs(config: EvaluationConfig, companies: list[str]) -> list[tfma.SlicingSpec]:
    specs = [tfma.SlicingSpec()]  # overall is computed only when listed
    specs += [tfma.SlicingSpec(feature_keys=[feature]) for feature in config.slices.features]
    specs += [tfma.SlicingSpec(feature_values={"company": company}) for company in companies]
    specs += [tfma.SlicingSpec(feature_keys=list(cross)) for cross in config.slices.crosses]
    return specs


def _group_spec(group: str, companies: list[str]) -> list[tfma.SlicingSpec]:
    if group == "company":
        return [tfma.SlicingSpec(feature_values={"company": company}) for company in companies]
    return [tfma.SlicingSpec(feature_keys=group.split("&"))]


def eval_config(config: EvaluationConfig, companies: list[str], with_baseline: bool) -> tfma.EvalConfig:
    metrics = []
    for name, (class_name, tfma_name) in METRICS.items():
        options = ""
        if name in ("precision", "recall"):
            options = f'"thresholds": {config.operating_threshold}, "name": "{tfma_name}"'
        metric = tfma.MetricConfig(class_name=class_name, module=METRIC_MODULES.get(class_name, ""), config=options)
        overall = config.thresholds.overall.get(name)  # type: ignore[call-overload]
        if overall is not None and (threshold := _threshold(name, overall, with_baseline)) is not None:
            metric.per_slice_thresholds.append(
                tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)
            )
        for group, bounds_by_metric in config.thresholds.per_slice.items():
            bounds = bounds_by_metric.get(name)  # type: ignore[call-overload]
            if bounds is not None and (threshold := _threshold(name, bounds, with_baseline)) is not None:
                metric.per_slice_thresholds.append(
                    tfma.PerSliceMetricThreshold(slicing_specs=_group_spec(group, companies), threshold=threshold)
                )
        metrics.append(metric)
    metrics += [
        tfma.MetricConfig(class_name=class_name, module=METRIC_MODULES[class_name]) for class_name, _ in CHECKS.values()
    ]
    model_specs = [_model_spec(CANDIDATE, False)] + ([_model_spec(BASELINE, True)] if with_baseline else [])
    return tfma.EvalConfig(
        model_specs=model_specs,
        slicing_specs=slicing_specs(config, companies),
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
        # Small slices are judged (or not) by our gate, not by TFMA's min_slice_size, which would turn
        # every threshold on them into "metric not found".
        options=tfma.Options(
            include_default_metrics={"value": False},
            compute_confidence_intervals={"value": False},
            min_slice_size={"value": 1},
        ),
    )


def data_columns(csv_path: str) -> dict[str, Any]:
    """The model's raw columns the CSV has, with the dtype `record_batches` gives them."""
    header = set(pd.read_csv(csv_path, nrows=0).columns)
    return {name: dtype for name, dtype in m.RAW_COLUMNS.items() if name in header}


def serving_problem(model_uri: str, columns: dict[str, Any]) -> str | None:
    """Why TFMA could not score rows of `columns` with this SavedModel's `serving_default`, or None.

    Read from `saved_model.pb` alone, without loading the model: a model that cannot be scored is
    refused here with its reason, not in a Beam worker's stack trace halfway through the data."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = artifacts.join(model_uri, "saved_model.pb")
    if not artifacts.exists(path):
        return "it is not a SavedModel (no saved_model.pb)"
    saved_model = saved_model_pb2.SavedModel()
    with artifacts.open_binary(path) as file:
        saved_model.ParseFromString(file.read())
    signatures = saved_model.meta_graphs[0].signature_def if saved_model.meta_graphs else {}
    if "serving_default" not in signatures:
        named = sorted(name for name in signatures if not name.startswith("__"))  # not TF's init op
        return f"it has no serving_default signature (it has: {', '.join(named) or 'none'})"
    signature = signatures["serving_default"]
    if "probabilities" not in signature.outputs:
        return f"its serving_default gives no probabilities (it gives: {', '.join(sorted(signature.outputs))})"
    output_dtype = m.tf.as_dtype(signature.outputs["probabilities"].dtype)
    if not output_dtype.is_floating:
        return f"its serving_default gives probabilities as {output_dtype.name}, not floating point numbers"
    missing = sorted(set(signature.inputs) - set(columns))
    if missing:
        return f"its serving_default takes {', '.join(missing)}, which the evaluation data does not have"
    mismatched = [
        f"{name} as {m.tf.as_dtype(info.dtype).name} (the data gives {columns[name].name})"
        for name, info in sorted(signature.inputs.items())
        if m.tf.as_dtype(info.dtype) != columns[name]
    ]
    if mismatched:
        return f"its serving_default takes {', '.join(mismatched)}"
    return None


def record_batches(csv_path: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    """The CSV as Arrow record batches of one-element list columns, with the model's missing-value defaults."""
    columns = list(data_columns(csv_path))
    for chunk in pd.read_csv(
        csv_path,
        chunksize=batch_size,
        dtype={c: str for c in columns if m.RAW_COLUMNS[c] == m.tf.string},
        keep_default_na=True,
    ):
        features = m.features_from_frame(chunk, columns)
        rows = len(chunk)
        offsets = pa.array(np.arange(rows + 1, dtype=np.int64))
        arrays, names = [], []
        for name, values in features.items():
            if m.RAW_COLUMNS[name] == m.tf.string:
                flat = pa.array([value.encode() for value in values], type=pa.large_binary())
            else:
                flat = pa.array(values)
            arrays.append(pa.LargeListArray.from_arrays(offsets, flat))
            names.append(name)
        arrays.append(pa.LargeListArray.from_arrays(offsets, pa.array(chunk[m.LABEL].to_numpy(np.int64))))
        names.append(m.LABEL)
        # TFMA's extractors expect the raw record column even when the model takes parsed features.
        arrays.append(pa.LargeListArray.from_arrays(offsets, pa.array([b""] * rows, type=pa.large_binary())))
        names.append(tfma.ARROW_INPUT_COLUMN)
        yield pa.RecordBatch.from_arrays(arrays, names)


def has_rows(csv_path: str, count: int) -> bool:
    """Whether the CSV has at least `count` data rows, reading only until it knows.

    Counts line ends: a quoted cell with a line break counts twice, close enough to choose where to run."""
    seen, last = -1, b"\n"  # -1: the header
    with artifacts.open_binary(csv_path) as file:
        while seen < count and (chunk := file.read(1 << 20)):
            seen, last = seen + chunk.count(b"\n"), chunk[-1:]
    if last != b"\n":
        seen += 1  # a last row without a line end
    return seen >= count


def beam_pipeline_args(config: EvaluationConfig, csv_path: str) -> list[str]:
    """The configured Beam options; a local multi-process DirectRunner keeps a small input in this process."""
    options = PipelineOptions(config.beam_pipeline_args)
    runner = options.view_as(StandardOptions).runner
    local_processes = runner in (None, "DirectRunner", "direct") and (
        options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    )
    if not local_processes or has_rows(csv_path, config.in_process_below_rows):
        return list(config.beam_pipeline_args)
    log.info(
        "fewer than %d rows (evaluation.in_process_below_rows): evaluating in this process, without Beam workers",
        config.in_process_below_rows,
    )
    return [
        arg
        for arg in config.beam_pipeline_args
        if not arg.startswith(("--direct_running_mode", "--direct_num_workers"))
    ]


def run_evaluation(
    *,
    csv_path: str,
    candidate_uri: str,
    baseline_uri: str | None,
    config: EvaluationConfig,
    companies: list[str],
    output_dir: Path,
) -> None:
    """Run TFMA over the CSV and write its metrics and validation result to `output_dir`."""
    cfg = eval_config(config, companies, with_baseline=baseline_uri is not None)
    # Without a baseline, TFMA drops the change thresholds ("rubber stamp") and judges value thresholds.
    models = [
        tfma.default_eval_shared_model(
            eval_saved_model_path=candidate_uri,
            eval_config=cfg,
            model_name=CANDIDATE,
            rubber_stamp=baseline_uri is None,
        )
    ]
    if baseline_uri is not None:
        models.append(
            tfma.default_eval_shared_model(eval_saved_model_path=baseline_uri, eval_config=cfg, model_name=BASELINE)
        )
    with beam.Pipeline(options=PipelineOptions(beam_pipeline_args(config, csv_path))) as pipeline:
        _ = (
            pipeline
            | "CsvPath" >> beam.Create([csv_path])
            | "RecordBatches" >> beam.FlatMap(record_batches, config.batch_size)
            # One file is one element: without this, Beam fuses the read with everything after it and a
            # single worker evaluates every row while the others wait.
            | "SpreadBatches" >> beam.Reshuffle()
            | "Evaluate"
            >> tfma.ExtractEvaluateAndWriteResults(
                eval_shared_model=models if len(models) > 1 else models[0], eval_config=cfg, output_path=str(output_dir)
            )
        )


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def load_slice_metrics(output_dir: Path) -> list[dict[str, Any]]:
    """Per slice: its features, candidate and baseline metrics (our names), in a stable order."""
    slices: dict[tuple, dict[str, Any]] = {}
    for record in tfma.load_metrics(str(output_dir)):
        if record.HasField("cross_slice_key"):
            continue
        key = tfma.slicer.deserialize_slice_key(record.slice_key)
        features = {name: value.decode() if isinstance(value, bytes) else str(value) for name, value in key}
        entry = slices.setdefault(
            key, {"slice": slice_name(features), "features": features, CANDIDATE: {}, BASELINE: None}
        )
        for item in record.metric_keys_and_values:
            ours = TFMA_NAMES.get(item.key.name)
            if ours is None or item.key.is_diff or item.value.WhichOneof("type") != "double_value":
                continue
            model = item.key.model_name or CANDIDATE
            if model == BASELINE and entry[BASELINE] is None:
                entry[BASELINE] = {}
            entry[model][ours] = _number(item.value.double_value.value)
    ordered = sorted(slices.values(), key=lambda s: (len(s["features"]), list(s["features"]), _sort_key(s)))
    for entry in ordered:
        entry["examples"] = int(entry[CANDIDATE].get("example_count") or 0)
    return ordered


def _sort_key(entry: dict[str, Any]) -> list:
    # Hours and days sort as numbers, names as text.
    return [(0, float(v), "") if v.lstrip("-").isdigit() else (1, 0.0, v) for v in entry["features"].values()]


def _spec_text(spec: tfma.SlicingSpec) -> str:
    if spec.feature_values:
        return " & ".join(f"{key}={value}" for key, value in sorted(spec.feature_values.items()))
    return "&".join(spec.feature_keys) or OVERALL


def load_validation(output_dir: Path) -> tuple[list[Any], list[str], bool]:
    """TFMA's failed thresholds (as gate.TfmaFailure), the slices a threshold needed but were missing,
    and whether no threshold was configured at all."""
    from tfpipe.evaluation.gate import TfmaFailure

    result = tfma.load_validation_result(str(output_dir))
    failures = []
    for per_slice in result.metric_validations_per_slice:
        if not per_slice.HasField("slice_key"):
            continue
        key = tfma.slicer.deserialize_slice_key(per_slice.slice_key)
        name = slice_name({k: v.decode() if isinstance(v, bytes) else str(v) for k, v in key})
        for failure in per_slice.failures:
            metric = TFMA_NAMES.get(failure.metric_key.name, failure.metric_key.name)
            threshold = failure.metric_threshold
            lower = upper = None
            if threshold.HasField("value_threshold"):
                value_threshold = threshold.value_threshold
                lower = value_threshold.lower_bound.value if value_threshold.HasField("lower_bound") else None
                upper = value_threshold.upper_bound.value if value_threshold.HasField("upper_bound") else None
            elif threshold.HasField("change_threshold"):
                change = threshold.change_threshold
                if change.direction == tfma.MetricDirection.HIGHER_IS_BETTER:
                    lower = change.absolute.value
                else:
                    upper = change.absolute.value
            value = failure.metric_value.double_value.value if failure.metric_value.HasField("double_value") else None
            failures.append(TfmaFailure(name, metric, failure.metric_key.is_diff, value, lower, upper))
    missing = [_spec_text(spec) for spec in result.missing_slices]
    return failures, missing, result.missing_thresholds
