"""Late labels: the real AUC of served predictions, once the trips' tips are known.

A trip's label (big tipper or not) is known only after the trip, when its span lands with `tips`. The
request log has no trip id: TF Serving's request format has no room for one (our server refuses unknown
fields, and the sticky key header identifies a user, not a trip, and is logged hashed). What it does have
is every feature the model got, and those identify a trip: the taxi data has no duplicate trips on the
feature columns (the validation suite's uniqueness rule holds for 99%+ of rows). So a served trip and a
labelled trip are joined on a fingerprint of the model's input features, canonicalised as the server
logged them (floats as float32, missing values as the model's defaults). Fingerprints that appear with
both labels among the labelled trips are ambiguous and dropped; the match rate is reported, and a version
with fewer than `labels.min_labeled` joined trips in a window is not judged.

Each window keeps its fingerprints and predictions (a few MB at most: the sampled rows); each run joins
every window still inside `labels.lookback_hours` with the labelled trips that landed since it began.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from tfpipe import artifacts

log = logging.getLogger(__name__)
BYTES, INT, FLOAT = 1, 2, 3
_NAN_SENTINEL = -1.2345678901234567e300


def canonical_frame(columns: Mapping[str, Any], types: Mapping[str, int]) -> pd.DataFrame:
    """The features as the server logged them: float32 values, -1 for a missing int, "" for a missing string."""
    frame = {}
    for name in sorted(columns):
        values = columns[name]
        kind = types.get(name, BYTES)
        series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
        if kind == BYTES:
            frame[name] = series.where(series.notna(), "").astype(str).to_numpy(dtype=object)
        elif kind == INT:
            frame[name] = pd.to_numeric(series, errors="coerce").fillna(-1).astype(np.int64).to_numpy()
        else:
            floats = pd.to_numeric(series, errors="coerce").astype(np.float32).astype(np.float64).to_numpy()
            floats = np.where(np.isnan(floats), _NAN_SENTINEL, floats) + 0.0  # + 0.0: -0.0 and 0.0 alike
            frame[name] = floats
    return pd.DataFrame(frame)


def fingerprints(columns: Mapping[str, Any], types: Mapping[str, int]) -> np.ndarray:
    """One uint64 per row: a hash of the row's canonical feature values (pandas' stable SipHash)."""
    frame = canonical_frame(columns, types)
    if frame.empty:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def csv_files(uri: str, newer_than: float | None = None) -> list[str]:
    """CSV files at `uri` (a file, or a folder searched recursively) changed since `newer_than` (epoch s)."""
    if artifacts.is_remote(uri):
        import tensorflow as tf

        files = [
            path
            for pattern in ("*.csv", "*/*.csv", "*/*/*.csv")
            for path in tf.io.gfile.glob(artifacts.join(uri, pattern))
        ]
        if newer_than is not None:
            files = [path for path in files if tf.io.gfile.stat(path).mtime_nsec / 1e9 >= newer_than]
        return sorted(set(files))
    root = artifacts.local_path(uri)
    if root.is_file():
        return [str(root)] if newer_than is None or root.stat().st_mtime >= newer_than else []
    if not root.is_dir():
        return []
    files = []
    for path in root.rglob("*.csv"):
        if any(part.startswith(".") or part.startswith("_") for part in path.relative_to(root).parts):
            continue
        if newer_than is None or path.stat().st_mtime >= newer_than:
            files.append(str(path))
    return sorted(files)


def labelled_trips(
    uri: str, columns: list[str], types: Mapping[str, int], label: str, newer_than: float | None = None
) -> tuple[dict[int, int], dict[str, Any]]:
    """{fingerprint: label} of the labelled trips at `uri` (files changed since `newer_than`, epoch seconds),
    ambiguous fingerprints dropped; and figures about what was read."""
    files = csv_files(uri, newer_than)
    fingerprints_seen: list[np.ndarray] = []
    labels_seen: list[np.ndarray] = []
    rows = 0
    for path in files:
        try:
            header = pd.read_csv(path, nrows=0).columns
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if label not in header or any(column not in header for column in columns):
            continue
        dtype = {column: str for column in columns if types.get(column, BYTES) == BYTES}
        for chunk in pd.read_csv(path, usecols=[*columns, label], dtype=dtype, chunksize=500_000):
            chunk = chunk[chunk[label].notna()]
            rows += len(chunk)
            fingerprints_seen.append(fingerprints({column: chunk[column] for column in columns}, types))
            labels_seen.append(chunk[label].astype(int).to_numpy() > 0)
    if not fingerprints_seen:
        return {}, {"files": len(files), "rows": 0, "ambiguous": 0}
    keys = np.concatenate(fingerprints_seen)
    values = np.concatenate(labels_seen)
    frame = pd.DataFrame({"key": keys, "label": values})
    grouped = frame.groupby("key")["label"].agg(["min", "max"])
    clear = grouped[grouped["min"] == grouped["max"]]
    table = dict(zip(clear.index.to_numpy(dtype=np.uint64).tolist(), clear["min"].astype(int).tolist(), strict=True))
    return table, {"files": len(files), "rows": rows, "ambiguous": int(len(grouped) - len(clear))}


def join_window(
    keys: np.ndarray, predictions: np.ndarray, version_codes: np.ndarray, versions: list[str], table: Mapping[int, int]
) -> dict[str, dict[str, Any]]:
    """Per version: how many served trips found their label, and the AUC on them."""
    out: dict[str, dict[str, Any]] = {}
    if len(keys) == 0:
        return out
    series = pd.Series(table, dtype="float64") if table else pd.Series(dtype="float64")
    found = series.reindex(pd.Index(keys.astype(np.uint64))).to_numpy() if table else np.full(len(keys), np.nan)
    for code, version in enumerate(versions):
        mask = (version_codes == code) & ~np.isnan(predictions)
        served = int(mask.sum())
        if served == 0:
            continue
        labels = found[mask]
        known = ~np.isnan(labels)
        value = auc(labels[known] > 0, predictions[mask][known]) if known.any() else None
        out[version] = {
            "served": served,
            "labeled": int(known.sum()),
            "match_share": float(known.sum() / served),
            "auc": None if value is None or math.isnan(value) else round(value, 5),
        }
    return out
