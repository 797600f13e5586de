"""What the monitoring keeps between runs, under one folder (local or gs://), keyed by window:

    <state>/windows/<start>--<end>/summary.json     figures, alerts (with since/notified), the probe
    <state>/windows/<start>--<end>/statistics/<version>.pb   TFDV statistics of the window's features
    <state>/windows/<start>--<end>/predictions.npz  trip fingerprints and predictions, for late labels
    <state>/baselines/<version>/...                 training statistics and eval predictions, cached

A window's files are a pure function of the window, so a rerun overwrites its own and nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from typing import Any

from tfpipe import artifacts

SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.npz"
_STAMP = "%Y%m%dT%H%M%SZ"


def window_key(start: dt.datetime, end: dt.datetime) -> str:
    return f"{start.astimezone(dt.UTC).strftime(_STAMP)}--{end.astimezone(dt.UTC).strftime(_STAMP)}"


def parse_window_key(key: str) -> tuple[dt.datetime, dt.datetime] | None:
    try:
        start, end = key.split("--")
        return (
            dt.datetime.strptime(start, _STAMP).replace(tzinfo=dt.UTC),
            dt.datetime.strptime(end, _STAMP).replace(tzinfo=dt.UTC),
        )
    except ValueError:
        return None


def _list_dirs(uri: str) -> list[str]:
    if not artifacts.exists(uri):
        return []
    if artifacts.is_remote(uri):
        import tensorflow as tf

        return sorted(
            name.rstrip("/") for name in tf.io.gfile.listdir(uri) if tf.io.gfile.isdir(artifacts.join(uri, name))
        )
    return sorted(path.name for path in artifacts.local_path(uri).iterdir() if path.is_dir())


def _write_bytes(uri: str, data: bytes) -> None:
    if artifacts.is_remote(uri):
        with artifacts.open_binary(uri, "wb") as handle:
            handle.write(data)
        return
    path = artifacts.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def _read_bytes(uri: str) -> bytes:
    with artifacts.open_binary(uri) as handle:
        return handle.read()


@dataclasses.dataclass(frozen=True)
class MonitoringState:
    uri: str

    def window_uri(self, start: dt.datetime, end: dt.datetime) -> str:
        return artifacts.join(self.uri, "windows", window_key(start, end))

    def baseline_uri(self, version: str) -> str:
        return artifacts.join(self.uri, "baselines", f"version={version}")

    def windows(self) -> list[tuple[dt.datetime, dt.datetime, str]]:
        """(start, end, uri) of every window with a summary, oldest first."""
        found = []
        root = artifacts.join(self.uri, "windows")
        for name in _list_dirs(root):
            span = parse_window_key(name)
            uri = artifacts.join(root, name)
            if span is not None and artifacts.exists(artifacts.join(uri, SUMMARY_FILE)):
                found.append((span[0], span[1], uri))
        return sorted(found)

    def summaries_before(self, start: dt.datetime, within: dt.timedelta) -> list[dict[str, Any]]:
        """Summaries of windows that ended at or before `start`, and after `start - within`; oldest first."""
        out = []
        for window_start, window_end, uri in self.windows():
            if start - within < window_end <= start and window_start < window_end:
                try:
                    out.append(artifacts.read_json(artifacts.join(uri, SUMMARY_FILE)))
                except (OSError, json.JSONDecodeError):
                    continue
        return out

    def previous_window(self, start: dt.datetime, length: dt.timedelta) -> tuple[dt.datetime, dt.datetime, str] | None:
        """The window of the same length that ends where this one starts, if it was monitored."""
        for window_start, window_end, uri in reversed(self.windows()):
            if window_end == start and window_end - window_start == length:
                return window_start, window_end, uri
        return None

    def write_summary(self, start: dt.datetime, end: dt.datetime, summary: dict[str, Any]) -> str:
        uri = artifacts.join(self.window_uri(start, end), SUMMARY_FILE)
        artifacts.write_json(uri, summary)
        return uri

    def write_bytes(self, uri: str, data: bytes) -> None:
        _write_bytes(uri, data)

    def read_bytes(self, uri: str) -> bytes:
        return _read_bytes(uri)

    def write_arrays(self, uri: str, **arrays: Any) -> None:
        import numpy as np

        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        _write_bytes(uri, buffer.getvalue())

    def read_arrays(self, uri: str) -> dict[str, Any]:
        import numpy as np

        with np.load(io.BytesIO(_read_bytes(uri)), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}


def default_state_uri(root: str, pipeline: str) -> str:
    return artifacts.join(root, pipeline, "monitoring")
