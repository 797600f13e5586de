"""Read one window of the model server's request log: columnar, fast, and bounded in cost.

The log (tfpipe.serving.request_log) is `requests.jsonl`, being written, and `requests.jsonl.1` ...
`requests.jsonl.N`, rotated, `.N` the oldest; one writer thread writes the lines in time order. A day
at 200 requests/s is ~17 million lines, ~9.6 GB: parsing all of it costs ~100 s of CPU here (pyarrow's
JSON reader and orjson alike, measured), more than a monitoring run may take. So:

1. For each file, the byte range of the window is found by binary search on the `ts` of the line at an
   offset (a few dozen small reads), so a window costs the same whether the folder holds an hour or a week.
2. Up to `budget_bytes` of those ranges are read: all of it when the window is smaller; otherwise an even
   (systematic) sample of whole blocks spread over the window, every line in a block read. Statistics,
   percentiles and rates estimated from such a sample are unbiased for steady traffic; the result says
   what share was read, and counts are scaled by it.
3. The lines read are parsed together by pyarrow's multithreaded JSON reader with an explicit schema
   (the features typed by the schema). A block it refuses (a value of the wrong type: the log is not
   trusted) is parsed line by line instead, and each bad value is counted as corrupted for its feature.

Missing values are as the model got them (tfpipe.serving.validation): null for a float, -1 for an int,
"" for a string. They are turned back into nulls here, so statistics count them as missing, as the
training data's statistics (from the CSV's empty cells) do.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

log = logging.getLogger(__name__)

FILE_NAME = "requests.jsonl"  # tfpipe.serving.request_log.FILE_NAME (not imported: that module needs the server)
# TFDV's feature types (schema_pb2.FeatureType).
BYTES, INT, FLOAT = 1, 2, 3
ARROW_TYPES = {INT: pa.int64(), FLOAT: pa.float64(), BYTES: pa.string()}
MISSING_INT = -1
BLOCK_BYTES = 1 << 20
MIN_BLOCK_BYTES = 64 << 10
# pyarrow's reader needs a whole line in one block: a 1,000-instance request is ~0.5 MB.
PARSE_BLOCK_BYTES = 32 << 20
SEARCH_SLACK = 64 << 10
_TS = re.compile(rb'"ts"\s*:\s*"([^"]*)"')
REQUEST_FIELDS = ("ts", "model", "version", "role", "latency_ms", "status")


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column as numpy, nulls included (pyarrow 10's ChunkedArray.to_numpy takes no zero_copy_only)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.to_numpy(zero_copy_only=False)


@dataclasses.dataclass(frozen=True)
class Segment:
    """Bytes [start, stop) of one log file: the window's lines in it."""

    path: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass
class Block:
    """A run of whole lines read from a segment, and the time it covers."""

    path: str
    offset: int
    data: bytes


@dataclasses.dataclass
class LogWindow:
    """The window's requests (one row per logged request) and instances (one row per instance)."""

    start: dt.datetime
    end: dt.datetime
    requests: pa.Table  # ts (timestamp[us, UTC]), version, role, latency_ms, status, instances
    instances: pa.Table  # version, request, prediction (null when failed), then one column per feature
    features: dict[str, int]  # feature -> TFDV type, as read
    corrupted: dict[str, dict[str, int]]  # version -> feature -> values that were not of the feature's type
    files: list[str]
    bytes_in_window: int
    bytes_read: int
    lines_read: int
    oldest_ts: dt.datetime | None  # the oldest line the log still holds
    block_times: list[tuple[float, float, int, str, int]]  # (first ts, last ts, bytes, file, offset) of each block read
    parse_seconds: float
    slow_lines: int = 0

    @property
    def sample_ratio(self) -> float:
        """Share of the window's bytes read (1.0: every line)."""
        return 1.0 if self.bytes_in_window == 0 else min(1.0, self.bytes_read / self.bytes_in_window)

    @property
    def covers_start(self) -> bool:
        """Whether the log still holds lines from before the window (else its start was rotated away)."""
        return self.oldest_ts is not None and self.oldest_ts <= self.start

    def estimated(self, count: float) -> float:
        return count / self.sample_ratio if self.sample_ratio > 0 else 0.0


def log_files(directory: str | os.PathLike) -> list[Path]:
    """The log's files, oldest first: requests.jsonl.N ... requests.jsonl.1, requests.jsonl."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    rotated = []
    for path in folder.iterdir():
        suffix = path.name[len(FILE_NAME) + 1 :]
        if path.name.startswith(FILE_NAME + ".") and suffix.isdigit() and path.is_file():
            rotated.append((int(suffix), path))
    files = [path for _, path in sorted(rotated, reverse=True)]
    current = folder / FILE_NAME
    if current.is_file():
        files.append(current)
    return files


def iso(moment: dt.datetime) -> bytes:
    """The log's form of a time (UTC isoformat), which sorts as the times do."""
    return moment.astimezone(dt.UTC).isoformat().encode()


def parse_ts(text: bytes | str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.decode() if isinstance(text, bytes) else text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _normalized_ts(raw: bytes) -> bytes:
    """A line's ts in the comparable UTC form (the server writes UTC already; other writers may not)."""
    if raw.endswith(b"+00:00"):
        return raw
    try:
        return iso(parse_ts(raw))
    except ValueError:
        return raw


class _File:
    """One open log file, frozen at its size when opened (the current file grows while it is read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.handle.seek(0, io.SEEK_END)
        self.size = self.handle.tell()

    def close(self) -> None:
        self.handle.close()

    def read(self, offset: int, length: int) -> bytes:
        self.handle.seek(offset)
        return self.handle.read(max(0, min(length, self.size - offset)))

    def line_start_at_or_after(self, offset: int) -> int:
        """The offset of the first line that starts at or after `offset` (`size` if none)."""
        if offset <= 0:
            return 0
        end = self.after_next_newline(offset - 1)
        return self.size if end is None else end

    def line_end(self, offset: int) -> int:
        """The offset just after the newline ending the line that holds `offset` (the last complete line)."""
        end = self.after_next_newline(offset)
        return self.last_complete_end() if end is None else end

    def after_next_newline(self, position: int) -> int | None:
        """The offset just after the first newline at or after `position`; None if no newline follows."""
        while position < self.size:
            chunk = self.read(position, SEARCH_SLACK)
            index = chunk.find(b"\n")
            if index >= 0:
                return position + index + 1
            position += len(chunk)
        return None

    def last_complete_end(self) -> int:
        """Where the file's complete lines end: a line still being written is not read."""
        return self.after_last_newline(self.size)

    def after_last_newline(self, end: int) -> int:
        """The offset just after the last newline before `end` (0 if none): where the line holding `end` starts."""
        position = end
        while position > 0:
            start = max(0, position - SEARCH_SLACK)
            chunk = self.read(start, position - start)
            index = chunk.rfind(b"\n")
            if index >= 0:
                return start + index + 1
            position = start
        return 0

    def ts_at(self, offset: int) -> bytes | None:
        """The ts of the line starting at `offset`, comparable; None at the end or for a line without one."""
        if offset >= self.size:
            return None
        head = self.read(offset, 256)
        match = _TS.search(head.split(b"\n", 1)[0])
        return _normalized_ts(match.group(1)) if match else None

    def first_line_not_before(self, target: bytes, low: int, high: int) -> int:
        """The start of the first line in [low, high) whose ts is >= target (`high` if none): a binary search
        on byte offsets, lines being in time order."""
        low = self.line_start_at_or_after(low)
        while high - low > SEARCH_SLACK:
            middle = self.line_start_at_or_after((low + high) // 2)
            if middle >= high:
                break
            ts = self.ts_at(middle)
            if ts is not None and ts >= target:
                high = middle
            else:
                low = self.line_start_at_or_after(middle + 1)
        # Scan the last stretch line by line.
        position = low
        while position < high:
            ts = self.ts_at(position)
            if ts is not None and ts >= target:
                return position
            following = self.line_start_at_or_after(position + 1)
            if following <= position:
                break
            position = following
        return high


def window_segments(
    files: list[Path], start: dt.datetime, end: dt.datetime, opened: dict[str, _File] | None = None
) -> tuple[list[Segment], dt.datetime | None]:
    """The byte ranges of each file that hold lines with start <= ts < end; and the oldest ts held.

    `opened`: the files already open (read_window opens every file once, before anything is read: a file
    renamed by a rotation meanwhile is still the same open file, so offsets stay valid)."""
    lower, upper = iso(start), iso(end)
    segments: list[Segment] = []
    oldest: dt.datetime | None = None
    for path in files:
        own = opened is None or str(path) not in opened
        try:
            handle = _File(path) if own else opened[str(path)]
        except FileNotFoundError:  # rotated away between listing and opening
            log.info("request log file %s went away while being read (rotated); skipped", path)
            continue
        try:
            complete = handle.last_complete_end()
            if complete == 0:
                continue
            first = handle.ts_at(0)
            if first is not None and oldest is None:
                oldest = parse_ts(first)
            last_start = handle.after_last_newline(complete - 1)  # complete - 1: the last newline
            last = handle.ts_at(last_start)
            if (last is not None and last < lower) or (first is not None and first >= upper):
                continue
            begin = 0 if first is not None and first >= lower else handle.first_line_not_before(lower, 0, complete)
            stop = (
                complete if last is not None and last < upper else handle.first_line_not_before(upper, begin, complete)
            )
            if stop > begin:
                segments.append(Segment(str(path), begin, stop))
        finally:
            if own:
                handle.close()
    return segments, oldest


def sample_blocks(
    segments: list[Segment], budget_bytes: int, opened: dict[str, _File] | None = None
) -> Iterator[Block]:
    """Whole lines of the segments: all of them within the budget, else evenly spaced blocks adding up to it."""
    total = sum(segment.size for segment in segments)
    if total == 0:
        return
    if total <= budget_bytes:
        for segment in segments:
            handle = (opened or {}).get(segment.path) or _File(Path(segment.path))
            try:
                position = segment.start
                while position < segment.stop:
                    stop = min(segment.stop, position + PARSE_BLOCK_BYTES)
                    stop = handle.line_end(stop - 1) if stop < segment.stop else stop
                    stop = min(stop, segment.stop)
                    yield Block(segment.path, position, handle.read(position, stop - position))
                    position = stop
            finally:
                if handle is not (opened or {}).get(segment.path):
                    handle.close()
        return
    ratio = budget_bytes / total
    block = max(MIN_BLOCK_BYTES, min(BLOCK_BYTES, budget_bytes // 64))
    stride = block / ratio
    # One global grid of block starts over the concatenated segments, half a stride in: even and deterministic.
    position = stride / 2
    offset_of_segment = 0
    for segment in segments:
        handle = (opened or {}).get(segment.path) or _File(Path(segment.path))
        try:
            while position < offset_of_segment + segment.size:
                begin = segment.start + int(position - offset_of_segment)
                begin = handle.line_start_at_or_after(begin) if begin > segment.start else begin
                stop = min(segment.stop, begin + block)
                stop = handle.line_end(stop - 1) if stop < segment.stop else stop
                stop = min(stop, segment.stop)
                if stop > begin:
                    yield Block(segment.path, begin, handle.read(begin, stop - begin))
                position += stride
        finally:
            if handle is not (opened or {}).get(segment.path):
                handle.close()
        offset_of_segment += segment.size


def _instance_type(features: dict[str, int]) -> pa.DataType:
    return pa.struct([(name, ARROW_TYPES[kind]) for name, kind in features.items()])


def _request_schema(features: dict[str, int]) -> pa.Schema:
    return pa.schema(
        [
            ("ts", pa.string()),
            ("model", pa.string()),
            ("version", pa.string()),
            ("role", pa.string()),
            ("latency_ms", pa.float64()),
            ("status", pa.int64()),
            ("instances", pa.list_(_instance_type(features))),
            ("predictions", pa.list_(pa.float64())),
        ]
    )


def discover_features(blocks: list[Block], known: dict[str, int], lines: int = 200) -> dict[str, int]:
    """The instance features the log holds (their TFDV type from the schema, else from the JSON values)."""
    found: dict[str, int] = {}
    seen = 0
    for block in blocks:
        for line in block.data.split(b"\n"):
            if not line.strip():
                continue
            try:
                document = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            for instance in document.get("instances") or []:
                if not isinstance(instance, dict):
                    continue
                for name, value in instance.items():
                    if name in found:
                        if found[name] == INT and isinstance(value, float) and name not in known:
                            found[name] = FLOAT
                        continue
                    if name in known:
                        found[name] = known[name]
                    elif isinstance(value, bool | int):
                        found[name] = INT
                    elif isinstance(value, float):
                        found[name] = FLOAT
                    elif isinstance(value, str):
                        found[name] = BYTES
            seen += 1
            if seen >= lines:
                return found
    return found


def _convert(value: Any, kind: int) -> tuple[Any, bool]:
    """(value for the column, whether it was corrupted)."""
    if value is None:
        return None, False
    if kind == BYTES:
        return (value, False) if isinstance(value, str) else (None, True)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, True
    if not math.isfinite(value):
        return None, True
    if kind == INT:
        if isinstance(value, float) and not value.is_integer():
            return None, True
        return int(value), False
    return float(value), False


def _parse_slowly(data: bytes, features: dict[str, int], corrupted: dict[str, dict[str, int]]) -> tuple[pa.Table, int]:
    """Line by line: a line that is not JSON is skipped (counted), a value of the wrong type becomes null."""
    rows: dict[str, list[Any]] = {name: [] for name in REQUEST_FIELDS}
    rows["instances"], rows["predictions"] = [], []
    skipped = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            document = orjson.loads(line)
            assert isinstance(document, dict)
        except (orjson.JSONDecodeError, AssertionError):
            skipped += 1
            continue
        version = str(document.get("version") or "")
        bad = corrupted.setdefault(version, {})
        instances = []
        for instance in document.get("instances") or []:
            instance = instance if isinstance(instance, dict) else {}
            row = {}
            for name, kind in features.items():
                value, wrong = _convert(instance.get(name), kind)
                row[name] = value
                if wrong:
                    bad[name] = bad.get(name, 0) + 1
            instances.append(row)
        predictions = document.get("predictions")
        if isinstance(predictions, list):
            clean = []
            for value in predictions:
                converted, wrong = _convert(value, FLOAT)
                clean.append(converted)
                if wrong:
                    bad["(prediction)"] = bad.get("(prediction)", 0) + 1
            predictions = clean
        else:
            predictions = None
        for name in REQUEST_FIELDS:
            value = document.get(name)
            if name == "latency_ms":
                value = _convert(value, FLOAT)[0]
            elif name == "status":
                value = _convert(value, INT)[0]
            elif value is not None:
                value = str(value)
            rows[name].append(value)
        rows["instances"].append(instances)
        rows["predictions"].append(predictions)
    return pa.Table.from_pydict(rows, schema=_request_schema(features)), skipped


def parse_blocks(
    blocks: list[Block], features: dict[str, int], corrupted: dict[str, dict[str, int]]
) -> tuple[pa.Table, int]:
    """All blocks as one table of requests; (table, lines parsed the slow way)."""
    schema = _request_schema(features)
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    read_options = pa_json.ReadOptions(block_size=PARSE_BLOCK_BYTES, use_threads=True)

    def fast(data: bytes) -> pa.Table:
        return pa_json.read_json(io.BytesIO(data), read_options=read_options, parse_options=options)

    try:
        return fast(b"".join(block.data for block in blocks)), 0
    except pa.ArrowInvalid as exc:
        log.warning("request log: some lines do not parse as expected (%s); reading those line by line", exc)
    tables, slow = [], 0
    for block in blocks:
        try:
            tables.append(fast(block.data))
        except pa.ArrowInvalid:
            table, skipped = _parse_slowly(block.data, features, corrupted)
            tables.append(table)
            slow += table.num_rows + skipped
            if skipped:
                bad = corrupted.setdefault("", {})
                bad["(line)"] = bad.get("(line)", 0) + skipped
    return pa.concat_tables(tables), slow


def _missing_as_null(values: pa.Array, kind: int) -> pa.Array:
    """The server's missing-value defaults (-1, "") back to nulls."""
    if kind == INT:
        return pc.if_else(pc.equal(values, MISSING_INT), pa.scalar(None, pa.int64()), values)
    if kind == BYTES:
        return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
    return pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)


def _flatten(requests: pa.Table, features: dict[str, int]) -> pa.Table:
    instances = requests.column("instances").combine_chunks()
    parents = pc.list_parent_indices(instances)
    flat = pc.list_flatten(instances)
    count = len(flat)
    version = pc.take(requests.column("version").combine_chunks(), parents)
    # One prediction per instance when the request succeeded; null for a failed one.
    predictions = requests.column("predictions").combine_chunks()
    answered = pc.fill_null(pc.equal(pc.list_value_length(predictions), pc.list_value_length(instances)), False)
    values = np.full(count, np.nan)
    answered_rows = np.asarray(pc.take(answered, parents).to_numpy(zero_copy_only=False), dtype=bool)
    flat_predictions = pc.list_flatten(pc.filter(predictions, answered))
    values[answered_rows] = np.asarray(flat_predictions.to_numpy(zero_copy_only=False), dtype=float)
    prediction = pa.array(values, mask=~answered_rows | np.isnan(values))
    columns = {"version": version, "request": parents, "prediction": prediction}
    for name, kind in features.items():
        columns[name] = _missing_as_null(flat.field(name), kind)
    return pa.table(columns)


def _block_time(data: bytes) -> tuple[float, float] | None:
    first = _TS.search(data[:512])
    tail = data[-4096:] if len(data) > 4096 else data
    lines = [line for line in tail.split(b"\n") if line.strip()]
    last = _TS.search(lines[-1][:512]) if lines else None
    if not first or not last:
        return None
    try:
        return parse_ts(_normalized_ts(first.group(1))).timestamp(), parse_ts(_normalized_ts(last.group(1))).timestamp()
    except ValueError:
        return None


def read_window(
    directory: str | os.PathLike,
    start: dt.datetime,
    end: dt.datetime,
    *,
    known_features: dict[str, int],
    budget_bytes: int,
    model: str | None = None,
) -> LogWindow:
    """The window [start, end) of the request log in `directory` (see the module's docstring)."""
    started = time.perf_counter()
    files = log_files(directory)
    opened: dict[str, _File] = {}
    for path in files:
        try:
            opened[str(path)] = _File(path)
        except FileNotFoundError:  # rotated away since listed
            continue
    try:
        segments, oldest = window_segments([Path(p) for p in opened], start, end, opened)
        blocks = list(sample_blocks(segments, budget_bytes, opened))
    finally:
        for handle in opened.values():
            handle.close()
    features = discover_features(blocks, known_features)
    corrupted: dict[str, dict[str, int]] = {}
    if blocks:
        table, slow = parse_blocks(blocks, features, corrupted)
    else:
        table, slow = _request_schema(features).empty_table(), 0
    lines = table.num_rows
    ts = pc.cast(table.column("ts"), pa.timestamp("us", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("ts"), "ts", ts)
    keep = pc.and_(
        pc.greater_equal(ts, pa.scalar(start.astimezone(dt.UTC), pa.timestamp("us", tz="UTC"))),
        pc.less(ts, pa.scalar(end.astimezone(dt.UTC), pa.timestamp("us", tz="UTC"))),
    )
    if model is not None:
        keep = pc.and_(keep, pc.equal(table.column("model"), model))
    table = table.filter(pc.fill_null(keep, False))
    instances = _flatten(table, features)
    requests = table.select(["ts", "version", "role", "latency_ms", "status"]).append_column(
        "instances", pc.list_value_length(table.column("instances"))
    )
    block_times = []
    for block in blocks:
        span = _block_time(block.data)
        if span is not None:
            block_times.append((span[0], span[1], len(block.data), block.path, block.offset))
    window = LogWindow(
        start=start,
        end=end,
        requests=requests,
        instances=instances,
        features=features,
        corrupted={version: counts for version, counts in corrupted.items() if counts},
        files=[str(path) for path in files],
        bytes_in_window=sum(segment.size for segment in segments),
        bytes_read=sum(len(block.data) for block in blocks),
        lines_read=lines,
        oldest_ts=oldest,
        block_times=block_times,
        parse_seconds=time.perf_counter() - started,
        slow_lines=slow,
    )
    log.info(
        "request log %s, window %s .. %s: %d lines in %d files, %.1f MB of %.1f MB read (%.1f%%), %d requests, "
        "%d instances, %.1f s",
        directory,
        start.isoformat(),
        end.isoformat(),
        lines,
        len(segments),
        window.bytes_read / 1e6,
        window.bytes_in_window / 1e6,
        100 * window.sample_ratio,
        requests.num_rows,
        instances.num_rows,
        window.parse_seconds,
    )
    return window
