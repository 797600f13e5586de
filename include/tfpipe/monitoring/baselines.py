"""What each served version is compared with: its training data, and its predictions at training time.

- Training baseline: TFDV statistics of the version's training split, as the validation stage wrote them
  for the run that trained it (`<run>/validation/statistics/train/statistics.pb`), or computed from
  training CSV data when that is what was given.
- Prediction baseline: the version's predictions on the evaluation split at training time. The evaluate
  stage keeps TFMA's metrics, not the predictions, so the version's SavedModel scores the evaluation split
  once and the histogram is cached; the AUC measured at training time comes from the evaluation's
  metrics.json when there is one, else from this scoring (the same data, the same model).

Where a version's artifacts are: given explicitly (the DAG's `baselines` param, tests), or found through
the model registry: the version's `tfpipe.run_key` tag names the training run, whose folder under the
artifact root is `<root>/<pipeline>/span=*/run=<run key>/` (ArtifactLayout). Results are cached under the
monitoring state, so each version costs this once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfpipe import artifacts
from tfpipe.monitoring.state import MonitoringState

log = logging.getLogger(__name__)
PREDICTION_BUCKETS = 20
WILDCARD = "*"


@dataclasses.dataclass
class BaselineSpec:
    """Where a version's baseline comes from (any field may be missing: that comparison is then not made)."""

    training_statistics_uri: str | None = None
    training_data_uri: str | None = None  # CSV file or folder, when there are no statistics
    eval_uri: str | None = None  # the evaluation split (CSV file or folder)
    model_uri: str | None = None
    auc: float | None = None
    source: str = "given"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineSpec:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown baseline field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)


@dataclasses.dataclass
class Baseline:
    version: str
    statistics: Any | None  # DatasetFeatureStatisticsList of the training data
    predictions: dict[str, Any] | None  # {"histogram": [20 shares], "positive_share", "count"}
    auc: float | None
    source: str
    problems: list[str]


def parse_specs(text: str | None) -> dict[str, BaselineSpec]:
    if not text:
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("baselines must be a JSON object {version: {...}}")
    return {str(version): BaselineSpec.from_dict(spec) for version, spec in data.items()}


def _run_folder(root: str, pipeline: str, run_key: str) -> str | None:
    pattern = artifacts.join(root, pipeline, "span=*", f"run={run_key}")
    if artifacts.is_remote(pattern):
        import tensorflow as tf

        found = tf.io.gfile.glob(pattern)
    else:
        import glob

        found = glob.glob(pattern)
    return sorted(found)[-1] if found else None


def from_registry(
    version: str, *, tracking_uri: str, model_name: str, artifact_root: str, pipeline: str
) -> BaselineSpec | None:
    """The artifacts of the training run that produced `version`, found through its registry tags."""
    if "://" not in tracking_uri or tracking_uri.startswith("sqlite:///"):
        database = tracking_uri.removeprefix("sqlite:///").partition("?")[0]
        if not os.path.exists(database):  # checked before importing MLflow (seconds) or creating a database
            log.warning("no model registry at %s: version %s has no baseline from it", tracking_uri, version)
            return None
    from tfpipe.data.split import split_files
    from tfpipe.registry.mlflow_registry import RUN_KEY_TAG, ModelRegistry, _loadable_uri

    registry = ModelRegistry(tracking_uri)
    try:
        model_version = registry.client.get_model_version(model_name, version)
    except Exception as exc:  # not registered (a model served by hand), or the registry is down
        log.warning("version %s of %s is not in the registry at %s: %s", version, model_name, tracking_uri, exc)
        return None
    spec = BaselineSpec(source=f"registry {model_name} v{version}")
    spec.model_uri = _loadable_uri(registry.client.get_model_version_download_uri(model_name, version))
    run_key = model_version.tags.get(RUN_KEY_TAG)
    run = _run_folder(artifact_root, pipeline, run_key) if run_key else None
    if run is None:
        log.warning("version %s: no run folder for run key %s under %s", version, run_key, artifact_root)
        return spec
    statistics = artifacts.join(run, "validation", "statistics", "train", "statistics.pb")
    spec.training_statistics_uri = statistics if artifacts.exists(statistics) else None
    splits = artifacts.join(run, "splits")
    if artifacts.exists(artifacts.join(splits, "manifest.json")):
        files, _ = split_files(splits, ("eval",))
        spec.eval_uri = files[0] if files else None
    metrics = artifacts.join(run, "evaluation", "metrics.json")
    if artifacts.exists(metrics):
        slices = artifacts.read_json(metrics).get("slices", [])
        overall = next((entry for entry in slices if not entry.get("features")), None)
        if overall is not None:
            spec.auc = (overall.get("candidate") or {}).get("auc")
    return spec


def _training_statistics(spec: BaselineSpec, schema: Any, histogram_buckets: int) -> Any:
    import tensorflow_data_validation as tfdv

    if spec.training_statistics_uri:
        return tfdv.load_stats_binary(spec.training_statistics_uri)
    if not spec.training_data_uri:
        return None
    import pyarrow as pa

    from tfpipe.monitoring.statistics import statistics_of_batches
    from tfpipe.validation.csv_batches import DecodeReport, decode_csv
    from tfpipe.validation.tfdv_checks import feature_types

    report = DecodeReport()
    batches: list[pa.RecordBatch] = []
    for uri in artifacts.csv_files(spec.training_data_uri, "training_data_uri"):
        with artifacts.open_binary(uri) as handle:
            batches.extend(decode_csv(handle, uri, feature_types(schema), report))
    return statistics_of_batches(batches, schema, histogram_buckets)


def prediction_summary(predictions: np.ndarray, operating_threshold: float) -> dict[str, Any]:
    values = np.asarray(predictions, dtype=float)
    values = values[np.isfinite(values)]
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=PREDICTION_BUCKETS, range=(0.0, 1.0))
    total = int(counts.sum())
    return {
        "histogram": [round(float(c) / total, 6) if total else 0.0 for c in counts],
        "positive_share": float((values > operating_threshold).mean()) if total else None,
        "count": total,
    }


def score_csv(model_uri: str, csv_uri: str, batch_rows: int = 8192) -> tuple[np.ndarray, np.ndarray | None]:
    """The SavedModel's serving signature over a CSV of trips: (predictions, labels or None)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import pandas as pd
    import tensorflow as tf

    from tfpipe.training import model as m

    signature = tf.saved_model.load(model_uri).signatures["serving_default"]
    inputs = list(signature.structured_input_signature[1])
    output = next(iter(signature.structured_outputs))
    predictions, labels = [], []
    for path in artifacts.csv_files(csv_uri, "eval_uri"):
        string_columns = {name: str for name in inputs if m.RAW_COLUMNS.get(name) == tf.string}
        for chunk in pd.read_csv(path, dtype=string_columns, chunksize=batch_rows):
            features = m.features_from_frame(chunk, inputs)
            outputs = signature(**{name: tf.constant(values) for name, values in features.items()})
            predictions.append(np.asarray(outputs[output]).reshape(-1))
            if m.LABEL in chunk:
                labels.append(chunk[m.LABEL].to_numpy())
    scores = np.concatenate(predictions) if predictions else np.zeros(0)
    return scores, (np.concatenate(labels) if labels else None)


def load(
    version: str,
    spec: BaselineSpec | None,
    *,
    state: MonitoringState,
    schema: Any,
    histogram_buckets: int,
    operating_threshold: float,
) -> Baseline:
    """The version's baseline, from the cache or computed once from `spec` and cached."""
    from tfpipe.monitoring.labels import auc as auc_of

    cache = state.baseline_uri(version)
    statistics_uri = artifacts.join(cache, "training_statistics.pb")
    predictions_uri = artifacts.join(cache, "eval_predictions.json")
    problems: list[str] = []
    statistics = predictions = None
    auc = spec.auc if spec else None
    source = spec.source if spec else "cache"
    import tensorflow_data_validation as tfdv

    if artifacts.exists(statistics_uri):
        statistics = tfdv.load_stats_binary(statistics_uri)
    elif spec is not None:
        try:
            statistics = _training_statistics(spec, schema, histogram_buckets)
        except Exception as exc:
            problems.append(f"training statistics could not be read: {exc}")
        if statistics is not None:
            state.write_bytes(statistics_uri, statistics.SerializeToString())
    if artifacts.exists(predictions_uri):
        cached = artifacts.read_json(predictions_uri)
        predictions, auc = cached["predictions"], auc if auc is not None else cached.get("auc")
    elif spec is not None and spec.model_uri and spec.eval_uri:
        try:
            scores, labels = score_csv(spec.model_uri, spec.eval_uri)
            predictions = prediction_summary(scores, operating_threshold)
            if auc is None and labels is not None:
                auc = auc_of(labels > 0, scores)
            artifacts.write_json(predictions_uri, {"predictions": predictions, "auc": auc, "source": source})
        except Exception as exc:
            problems.append(f"the evaluation split could not be scored with {spec.model_uri}: {exc}")
    if statistics is None:
        problems.append("no training statistics: skew and missing-value increases are not judged")
    if predictions is None:
        problems.append("no predictions on the evaluation split: prediction drift is judged against nothing")
    return Baseline(version, statistics, predictions, auc, source, problems)
