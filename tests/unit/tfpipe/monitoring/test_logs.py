"""Reading a window of the request log: rotated files, the byte range by binary search, sampling, bad lines."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from tfpipe.monitoring import logs

START = dt.datetime(2026, 5, 9, 12, tzinfo=dt.UTC)
TYPES = {"fare": logs.FLOAT, "trip_seconds": logs.INT, "company": logs.BYTES}


def _line(second: float, *, version="1", fare=10.0, seconds=300, company="Flash Cab", status=200) -> bytes:
    ts = (START + dt.timedelta(seconds=second)).isoformat()
    instance = {"fare": fare, "trip_seconds": seconds, "company": company}
    return (
        orjson.dumps(
            {
                "ts": ts,
                "model": "big_tipper",
                "version": version,
                "role": "stable",
                "key": None,
                "instances": [instance],
                "predictions": [0.25] if status == 200 else None,
                "latency_ms": 1.5,
                "status": status,
            }
        )
        + b"\n"
    )


def _write(folder, files: dict[str, list[bytes]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (folder / name).write_bytes(b"".join(lines))


def test_a_window_is_read_across_rotated_files_and_only_its_lines(tmp_path):
    # Two seconds per line, 3 files: .2 (oldest) 0-598 s, .1 600-1198 s, current 1200-1798 s.
    _write(
        tmp_path,
        {
            "requests.jsonl.2": [_line(s) for s in range(0, 600, 2)],
            "requests.jsonl.1": [_line(s) for s in range(600, 1200, 2)],
            "requests.jsonl": [_line(s) for s in range(1200, 1800, 2)],
        },
    )
    assert [p.name for p in logs.log_files(tmp_path)] == ["requests.jsonl.2", "requests.jsonl.1", "requests.jsonl"]
    window = logs.read_window(
        tmp_path,
        START + dt.timedelta(seconds=500),
        START + dt.timedelta(seconds=1300),
        known_features=TYPES,
        budget_bytes=1 << 30,
    )
    times = [t.timestamp() - START.timestamp() for t in window.requests.column("ts").to_pylist()]
    assert times == list(range(500, 1300, 2))
    assert window.sample_ratio == 1.0 and window.covers_start
    assert window.instances.num_rows == 400 and set(window.instances.column_names) >= {"fare", "version", "prediction"}


def test_a_large_window_is_read_as_an_even_sample_of_whole_lines(tmp_path):
    _write(tmp_path, {"requests.jsonl": [_line(s / 10) for s in range(0, 36000)]})  # an hour at 10/s
    budget = 400_000
    window = logs.read_window(tmp_path, START, START + dt.timedelta(hours=1), known_features=TYPES, budget_bytes=budget)
    assert 0.03 < window.sample_ratio < 0.1
    assert window.bytes_read <= budget * 1.2
    times = sorted(t.timestamp() - START.timestamp() for t in window.requests.column("ts").to_pylist())
    # Spread over the whole hour, not the first minutes only.
    assert times[0] < 400 and times[-1] > 3200
    assert window.estimated(window.requests.num_rows) == pytest.approx(36000, rel=0.1)


def test_missing_defaults_become_nulls_and_a_bad_value_is_counted_corrupted(tmp_path):
    lines = [_line(s, fare=None, seconds=-1, company="") for s in range(10)]
    lines.append(_line(10).replace(b'"fare":10.0', b'"fare":"ten"'))
    lines.append(b"this is not json\n")
    lines += [_line(s) for s in range(12, 20)]
    _write(tmp_path, {"requests.jsonl": lines})
    window = logs.read_window(
        tmp_path, START, START + dt.timedelta(minutes=1), known_features=TYPES, budget_bytes=1 << 20
    )
    fare = window.instances.column("fare").to_pylist()
    assert fare[:10] == [None] * 10 and fare[-1] == 10.0
    assert window.instances.column("trip_seconds").to_pylist()[:10] == [None] * 10
    assert window.instances.column("company").to_pylist()[:10] == [None] * 10
    assert window.corrupted["1"]["fare"] == 1 and window.corrupted[""]["(line)"] == 1
    assert window.requests.num_rows == 19


def test_a_failed_request_has_no_prediction_and_a_half_written_line_is_not_read(tmp_path):
    _write(tmp_path, {"requests.jsonl": [_line(0), _line(1, status=500), _line(2)[:40]]})
    window = logs.read_window(
        tmp_path, START, START + dt.timedelta(minutes=1), known_features=TYPES, budget_bytes=1 << 20
    )
    assert window.requests.column("status").to_pylist() == [200, 500]
    assert window.instances.column("prediction").to_pylist() == [0.25, None]


def test_no_log_is_an_empty_window(tmp_path):
    window = logs.read_window(
        tmp_path / "none", START, START + dt.timedelta(hours=1), known_features=TYPES, budget_bytes=1
    )
    assert window.requests.num_rows == 0 and window.oldest_ts is None and not window.covers_start
