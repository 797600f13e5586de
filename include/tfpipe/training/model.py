"""The big_tipper model: raw taxi trips in, probability out, with all preprocessing inside the model.

Every step from a raw trip to the network's numbers (missing-value defaults, log transforms, normalization
constants, vocabularies, location buckets, crosses) is a Keras layer adapted once on training data and saved
with the weights. The exported SavedModel therefore takes raw trips, exactly as the CSV holds them: there is
no second implementation of the preprocessing on the serving side that could drift from training, which is
what causes training/serving skew.

`tips` is known only after the trip (and `big_tipper` is derived from it), so it is never read: `make_dataset`
does not select it and the model has no input for it.

Missing values: a missing FLOAT is NaN, a missing INT is -1 (every valid INT in the schema is >= 0), a missing
BYTES is "". `make_dataset` and `features_from_frame` apply these defaults; serving clients send them too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The project's ML runtime is tf-keras 2.16; without this flag tf.keras would mean Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.python.autograph.core import config as _autograph_config

# AutoGraph leaves `keras` alone (its code runs as it is written) but not the same code under its
# `tf_keras` name: without this rule the first fit of every process transpiles tf_keras, which took
# 11-20 s here per training process (each worker, each trial). The rule is TensorFlow's own mechanism.
if not any(getattr(rule, "_prefix", "") == "tf_keras" for rule in _autograph_config.CONVERSION_RULES):
    _autograph_config.CONVERSION_RULES = (
        _autograph_config.DoNotConvert("tf_keras"),
        *_autograph_config.CONVERSION_RULES,
    )

LABEL = "big_tipper"
# Known only after the trip: reading it would leak the label.
NEVER_FEATURES = frozenset({"tips"})

MISSING_FLOAT = math.nan
MISSING_INT = -1
MISSING_STRING = ""

# Raw columns a model may take, with their schema types (dags/configs/chicago_taxi/schema.pbtxt).
RAW_COLUMNS: dict[str, tf.DType] = {
    "pickup_community_area": tf.int64,
    "fare": tf.float32,
    "trip_start_month": tf.int64,
    "trip_start_hour": tf.int64,
    "trip_start_day": tf.int64,
    "trip_start_timestamp": tf.int64,
    "pickup_latitude": tf.float32,
    "pickup_longitude": tf.float32,
    "dropoff_latitude": tf.float32,
    "dropoff_longitude": tf.float32,
    "trip_miles": tf.float32,
    "pickup_census_tract": tf.int64,
    "dropoff_census_tract": tf.int64,
    "payment_type": tf.string,
    "company": tf.string,
    "trip_seconds": tf.int64,
    "dropoff_community_area": tf.int64,
}

_MISSING = {tf.int64: MISSING_INT, tf.float32: MISSING_FLOAT, tf.string: MISSING_STRING}
# IntegerLookup's own OOV token must differ from MISSING_INT, which is an ordinary (learned) value.
_OOV_INT = -999
# Lines held for shuffling (strings, before decoding): a few MB whatever the data size.
SHUFFLE_BUFFER = 10_000


@dataclass(frozen=True)
class Feature:
    """How one raw column enters the model.

    kind:
    - "numeric": the value, normalized, plus an is-missing indicator;
    - "log": log1p of the value (clipped at 0), normalized, plus an is-missing indicator;
    - "category": vocabulary lookup (most frequent `max_tokens`, the rest and unseen values share one OOV
      slot), one-hot; the missing value is an ordinary category;
    - "geo": normalized value plus an is-missing indicator, and `bins` quantile buckets (a missing value gets
      its own bucket) that the design's crosses combine, e.g. latitude x longitude into a grid cell.
    """

    kind: str
    max_tokens: int | None = None
    bins: int = 0


FEATURES: dict[str, Feature] = {
    "fare": Feature("log"),
    "trip_miles": Feature("log"),
    "trip_seconds": Feature("log"),
    "payment_type": Feature("category"),
    "company": Feature("category", max_tokens=64),
    "trip_start_hour": Feature("category"),
    "trip_start_day": Feature("category"),
    "trip_start_month": Feature("category"),
    "pickup_community_area": Feature("category"),
    "dropoff_community_area": Feature("category"),
    "pickup_latitude": Feature("geo", bins=10),
    "pickup_longitude": Feature("geo", bins=10),
    "dropoff_latitude": Feature("geo", bins=10),
    "dropoff_longitude": Feature("geo", bins=10),
}
"""The default feature set. Unused raw columns: `pickup_census_tract` (empty in nearly every trip),
`dropoff_census_tract` (empty in 28%; its hundreds of values overfit ~14k trips, and the community areas and
the location grid already say where the trip ends), and `trip_start_timestamp` (an absolute time does not
extrapolate to later spans; month, day and hour carry the season)."""


@dataclass(frozen=True)
class Design:
    """A model design: which features, which crosses, and the network's shape."""

    features: Mapping[str, Feature] = field(default_factory=lambda: dict(FEATURES))
    # Pairs of "geo" or "category" features crossed exactly (one-hot over every pair of buckets/ids).
    crosses: tuple[tuple[str, str], ...] = (
        ("pickup_latitude", "pickup_longitude"),
        ("dropoff_latitude", "dropoff_longitude"),
    )
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.3
    # A linear part on the one-hot features and crosses, added to the deep part's logit (wide & deep).
    wide: bool = False
    learning_rate: float = 1e-3
    l2: float = 1e-4


DEFAULT_DESIGN = Design()


def feature_columns(design: Design = DEFAULT_DESIGN) -> list[str]:
    return [name for name in RAW_COLUMNS if name in design.features]


# ---------------------------------------------------------------------------------------------------------
# Data


def make_dataset(
    csv_paths: str | os.PathLike | Iterable[str | os.PathLike],
    batch_size: int = 256,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    num_epochs: int | None = 1,
    with_label: bool = True,
    columns: Iterable[str] | None = None,
) -> tf.data.Dataset:
    """Stream (features, label) batches from CSV files with a header, or features only if not `with_label`.

    Features are `columns` (default: all RAW_COLUMNS; a model's own are `feature_columns(design)`), rank-1
    per batch, with the missing-value defaults. `tips` is never read.
    """
    wanted = list(RAW_COLUMNS) if columns is None else list(columns)
    unknown = [c for c in wanted if c not in RAW_COLUMNS]
    if unknown:
        raise ValueError(f"not raw feature columns: {unknown}")
    if isinstance(csv_paths, str | os.PathLike):
        csv_paths = [csv_paths]
    paths = [os.fspath(p) for p in csv_paths]
    if not paths:
        raise ValueError("no CSV files given")
    header = _header(paths[0])
    for path in paths[1:]:
        if _header(path) != header:
            raise ValueError(f"{path}: header differs from {paths[0]}'s")
    absent = [c for c in wanted if c not in header]
    if with_label and LABEL not in header:
        absent.append(LABEL)
    if absent:
        raise ValueError(f"{paths[0]}: missing columns {absent}")
    # decode_csv takes the selected columns' positions and defaults in the file's order.
    selected = [c for c in header if c in wanted or (with_label and c == LABEL)]
    positions = [header.index(c) for c in selected]
    defaults: list[Any] = [
        tf.constant([], tf.int64) if c == LABEL else tf.constant([_MISSING[RAW_COLUMNS[c]]], RAW_COLUMNS[c])
        for c in selected
    ]

    def decode(lines: tf.Tensor) -> Any:
        # One vectorized decode per batch of lines: about 4x the rows/s of make_csv_dataset's per-row parsing.
        columns = dict(
            zip(selected, tf.io.decode_csv(lines, defaults, select_cols=positions, na_value=""), strict=True)
        )
        if with_label:
            label = columns.pop(LABEL)
            return columns, label
        return columns

    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    lines = files.interleave(
        lambda path: tf.data.TextLineDataset(path).skip(1),  # every file has its header
        cycle_length=min(len(paths), 8) if shuffle else 1,
        num_parallel_calls=tf.data.AUTOTUNE if shuffle else None,
        deterministic=True,
    )
    if shuffle:
        lines = lines.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    lines = lines.repeat(num_epochs) if num_epochs != 1 else lines
    return (
        lines.batch(batch_size)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def _header(path: str) -> list[str]:
    with tf.io.gfile.GFile(path) as f:
        return f.readline().rstrip("\r\n").split(",")


def features_from_frame(frame: Any, columns: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Raw feature arrays from a pandas frame read from the trips CSV, with the missing-value defaults."""
    out = {}
    for name in columns if columns is not None else RAW_COLUMNS:
        dtype = RAW_COLUMNS[name]
        values = frame[name]
        if dtype == tf.string:
            out[name] = values.fillna(MISSING_STRING).astype(str).to_numpy(dtype=object)
        elif dtype == tf.int64:
            out[name] = values.fillna(MISSING_INT).astype(np.int64).to_numpy()
        else:
            out[name] = values.astype(np.float32).to_numpy()
    return out


def _feature_batches(data: Any) -> tf.data.Dataset:
    """Feature-dict batches from a (features[, label]) dataset, a pandas frame or a dict of arrays."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        return data.map(lambda *e: e[0]) if isinstance(spec, tuple) else data
    arrays = dict(data) if isinstance(data, Mapping) else features_from_frame(data)
    arrays = {k: v for k, v in arrays.items() if k in RAW_COLUMNS}
    return tf.data.Dataset.from_tensor_slices(arrays).batch(1024)


# ---------------------------------------------------------------------------------------------------------
# Model


def _is_missing(x: tf.Tensor) -> tf.Tensor:
    return tf.math.is_nan(x) if x.dtype.is_floating else tf.less(x, 0)


def _log_value(x: tf.Tensor) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    return tf.math.log1p(tf.where(_is_missing(x) | (x < 0), 0.0, x))


def _numeric_value(x: tf.Tensor) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    return tf.where(_is_missing(x), 0.0, x)


def _geo_value(x: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.math.is_nan(x), 0.0, x)


def _missing_flag(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(_is_missing(x), tf.float32)


def _column(batches: tf.data.Dataset, name: str, fn=None, drop_missing: bool = False) -> tf.data.Dataset:
    """One column as (batch, 1) tensors, transformed by `fn`, for adapting a layer."""

    def pick(features):
        x = tf.reshape(features[name], [-1, 1])
        if drop_missing:
            x = tf.boolean_mask(x, tf.logical_not(_is_missing(x))[:, 0])
        return fn(x) if fn is not None else x

    return batches.map(pick)


@dataclass
class Preprocessed:
    inputs: dict[str, keras.KerasTensor]
    deep: keras.KerasTensor  # everything, for the deep part
    wide: keras.KerasTensor | None  # one-hot features and crosses only, for the linear part (None: there are none)


TRANSFORM_FORMAT = 1


def _float_list(values: Any) -> list[float]:
    # float32 constants round-trip exactly through JSON's float64.
    return [float(v) for v in np.asarray(values, dtype=np.float32).reshape(-1)]


def analyze(data: Any, design: Design = DEFAULT_DESIGN) -> dict[str, Any]:
    """Everything the model learns from data before training: the transform, as a JSON-able dict.

    Per feature: normalization mean and variance, vocabularies (most frequent first) and quantile
    bucket boundaries. `data` is TRAINING data only: a `make_dataset` dataset (finite, num_epochs=1),
    a pandas frame or a dict of raw arrays. Streaming: Keras' adapt reads it batch by batch, once per
    statistic. The result is saved once per training run and every model of that run (each tuning
    trial, each worker) is built from it, so none of them computes its own.
    """
    batches = _feature_batches(data)
    features: dict[str, dict[str, Any]] = {}
    for name in feature_columns(design):
        spec = design.features[name]
        dtype = RAW_COLUMNS[name]
        if spec.kind in ("log", "numeric"):
            norm = keras.layers.Normalization()
            norm.adapt(_column(batches, name, _log_value if spec.kind == "log" else _numeric_value))
            features[name] = {"mean": _float_list(norm.mean), "variance": _float_list(norm.variance)}
        elif spec.kind == "category":
            if dtype == tf.string:
                lookup = keras.layers.StringLookup(max_tokens=spec.max_tokens)
            else:
                lookup = keras.layers.IntegerLookup(max_tokens=spec.max_tokens, oov_token=_OOV_INT)
            lookup.adapt(_column(batches, name))
            vocabulary = lookup.get_vocabulary(include_special_tokens=False)
            if dtype == tf.string:
                vocabulary = [v.decode() if isinstance(v, bytes) else str(v) for v in vocabulary]
            else:
                vocabulary = [int(v) for v in vocabulary]
            features[name] = {"vocabulary": vocabulary}
        elif spec.kind == "geo":
            norm = keras.layers.Normalization()
            norm.adapt(_column(batches, name, drop_missing=True))
            buckets = keras.layers.Discretization(num_bins=spec.bins)
            buckets.adapt(_column(batches, name, drop_missing=True))
            features[name] = {
                "mean": _float_list(norm.mean),
                "variance": _float_list(norm.variance),
                "boundaries": _float_list(buckets.bin_boundaries),
            }
        else:
            raise ValueError(f"{name}: unknown feature kind {spec.kind!r}")
        features[name] = {"kind": spec.kind, **features[name]}
    return {"format": TRANSFORM_FORMAT, "features": features}


def _transform_of(transform: Mapping[str, Any], name: str, kind: str) -> Mapping[str, Any]:
    entry = transform.get("features", {}).get(name)
    if entry is None:
        raise ValueError(f"the transform has no constants for feature {name!r}: it was analyzed for another design")
    if entry.get("kind") != kind:
        raise ValueError(f"feature {name!r} was analyzed as {entry.get('kind')!r}, the design says {kind!r}")
    return entry


def build_preprocessing(transform: Mapping[str, Any], design: Design = DEFAULT_DESIGN) -> Preprocessed:
    """Keras inputs for the raw columns and their preprocessed tensors, with constants from `transform`."""
    if transform.get("format") != TRANSFORM_FORMAT:
        raise ValueError(f"transform format {transform.get('format')!r}, expected {TRANSFORM_FORMAT}")
    inputs: dict[str, keras.KerasTensor] = {}
    deep: list[keras.KerasTensor] = []
    wide: list[keras.KerasTensor] = []
    ids: dict[str, tuple[keras.KerasTensor, int]] = {}  # integer ids and their count, for crosses

    for name in feature_columns(design):
        spec = design.features[name]
        dtype = RAW_COLUMNS[name]
        constants = _transform_of(transform, name, spec.kind)
        x = keras.Input(shape=(1,), name=name, dtype=dtype)
        inputs[name] = x
        if spec.kind in ("log", "numeric"):
            fn = _log_value if spec.kind == "log" else _numeric_value
            norm = keras.layers.Normalization(
                mean=constants["mean"], variance=constants["variance"], name=f"{name}_norm"
            )
            deep += [norm(keras.layers.Lambda(fn, name=f"{name}_{spec.kind}")(x))]
            deep += [keras.layers.Lambda(_missing_flag, name=f"{name}_missing")(x)]
        elif spec.kind == "category":
            vocabulary = constants["vocabulary"]
            if dtype == tf.string:
                lookup = keras.layers.StringLookup(vocabulary=vocabulary, name=f"{name}_lookup")
            else:
                lookup = keras.layers.IntegerLookup(
                    vocabulary=np.asarray(vocabulary, dtype=np.int64), oov_token=_OOV_INT, name=f"{name}_lookup"
                )
            index = lookup(x)
            size = lookup.vocabulary_size()
            ids[name] = (index, size)
            one_hot = keras.layers.CategoryEncoding(size, output_mode="one_hot", name=f"{name}_onehot")(index)
            deep.append(one_hot)
            wide.append(one_hot)
        elif spec.kind == "geo":
            norm = keras.layers.Normalization(
                mean=constants["mean"], variance=constants["variance"], name=f"{name}_norm"
            )
            value = keras.layers.Lambda(_geo_value, name=f"{name}_filled")(x)
            missing = keras.layers.Lambda(_missing_flag, name=f"{name}_missing")(x)
            # A missing value gets its own normalized 0 and the indicator, not a fake location.
            deep += [keras.layers.Multiply(name=f"{name}_present")([norm(value), 1.0 - missing]), missing]
            boundaries = constants["boundaries"]
            buckets = keras.layers.Discretization(bin_boundaries=boundaries, name=f"{name}_buckets")
            count = len(boundaries) + 1
            bucket = keras.layers.Lambda(
                lambda t, n=count: tf.where(t[1] > 0, tf.constant(n, tf.int64), t[0]),
                name=f"{name}_bucket",
            )([buckets(value), missing])
            ids[name] = (bucket, count + 1)
        else:
            raise ValueError(f"{name}: unknown feature kind {spec.kind!r}")

    for a, b in design.crosses:
        (ia, na), (ib, nb) = ids[a], ids[b]
        cell = keras.layers.Lambda(lambda t, n=nb: t[0] * n + t[1], name=f"{a}_x_{b}")([ia, ib])
        one_hot = keras.layers.CategoryEncoding(na * nb, output_mode="one_hot", name=f"{a}_x_{b}_onehot")(cell)
        deep.append(one_hot)
        wide.append(one_hot)

    concat = keras.layers.Concatenate(name="deep_features")
    wide_features = keras.layers.Concatenate(name="wide_features")(wide) if wide else None
    return Preprocessed(inputs, concat(deep), wide_features)


def build_model(transform: Mapping[str, Any], design: Design = DEFAULT_DESIGN) -> keras.Model:
    """A compiled model from raw features (one scalar input per column) to P(big_tipper).

    `transform` is `analyze`'s result for the same design (the constants learned from training data).
    """
    pre = build_preprocessing(transform, design)
    reg = keras.regularizers.l2(design.l2) if design.l2 else None
    x = pre.deep
    for i, units in enumerate(design.hidden):
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"hidden_{i}")(x)
        if design.dropout:
            x = keras.layers.Dropout(design.dropout, name=f"dropout_{i}")(x)
    logit = keras.layers.Dense(1, name="deep_logit")(x)
    if design.wide:
        if pre.wide is None:
            raise ValueError("a wide part needs category features or crosses; this design has none")
        wide_logit = keras.layers.Dense(1, kernel_regularizer=reg, name="wide_logit")(pre.wide)
        logit = keras.layers.Add(name="logit")([logit, wide_logit])
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    model = keras.Model(pre.inputs, probability, name="big_tipper")
    model.compile(
        optimizer=keras.optimizers.Adam(design.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(num_thresholds=10_000, name="auc")],
    )
    return model


# ---------------------------------------------------------------------------------------------------------
# Serving


def export_serving_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Save `model` as a SavedModel whose `serving_default` maps raw feature batches to probabilities.

    The signature takes one rank-1 tensor per model input (named like the raw column, missing values as
    documented above) and returns {"probabilities": float32 [batch]}.
    """
    spec = {name: tf.TensorSpec([None], x.dtype, name=name) for name, x in model.input.items()}

    @tf.function(input_signature=[spec])
    def serve(features):
        columns = {name: tf.expand_dims(value, -1) for name, value in features.items()}
        return {"probabilities": tf.reshape(model(columns, training=False), [-1])}

    path = os.fspath(path)
    model.save(path, save_format="tf", include_optimizer=False, signatures={"serving_default": serve})
    return path
