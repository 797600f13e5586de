"""Decode CSV files into the Arrow record batches TFDV computes statistics on, typed by the schema.

Every column is read as text first (pyarrow's multithreaded reader, streaming block by block, so
memory does not grow with the file) and then converted to the schema's type. A value that does not
convert is not a crash: it is counted, a few examples are kept with the column named, and the value
counts as missing, so statistics still describe the rest. Rows with the wrong number of fields
(a truncated last line, a stray delimiter) are skipped and counted with their line numbers. Files
that cannot be data at all (empty, binary, a different delimiter) are reported as such.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from tfpipe.validation.findings import Finding

MAX_EXAMPLES = 5
BLOCK_BYTES = 8 << 20
# TFDV's feature types (schema_pb2.FeatureType): INT = 2, FLOAT = 3, BYTES = 1.
INT, FLOAT, BYTES = 2, 3, 1


@dataclass
class ColumnProblems:
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, count: int, examples: list[str]) -> None:
        self.count += count
        self.examples = (self.examples + [e for e in examples if e not in self.examples])[:MAX_EXAMPLES]


@dataclass
class DecodeReport:
    """What decoding one dataset (one or more files) found, mergeable across files and workers."""

    rows: int = 0
    files: list[str] = field(default_factory=list)
    fatal: list[tuple[str, str]] = field(default_factory=list)  # (file, problem): the file yielded no rows
    empty_files: list[str] = field(default_factory=list)
    header_only_files: list[str] = field(default_factory=list)
    bad_rows: ColumnProblems = field(default_factory=ColumnProblems)  # examples: "file:line: problem"
    type_errors: dict[str, ColumnProblems] = field(default_factory=dict)
    non_integers: dict[str, ColumnProblems] = field(default_factory=dict)

    def merge(self, other: DecodeReport) -> DecodeReport:
        merged = DecodeReport(
            rows=self.rows + other.rows,
            files=sorted(self.files + other.files),
            fatal=sorted(self.fatal + other.fatal),
            empty_files=sorted(self.empty_files + other.empty_files),
            header_only_files=sorted(self.header_only_files + other.header_only_files),
        )
        for source in (self, other):
            merged.bad_rows.add(source.bad_rows.count, source.bad_rows.examples)
            for name in ("type_errors", "non_integers"):
                for column, problems in getattr(source, name).items():
                    getattr(merged, name).setdefault(column, ColumnProblems()).add(problems.count, problems.examples)
        return merged

    def findings(self, dataset: str) -> list[Finding]:
        found: list[Finding] = []
        for path, problem in self.fatal:
            found.append(Finding("file", "unreadable_file", None, "error", f"{path}: {problem}", {"dataset": dataset}))
        for path in self.empty_files:
            found.append(Finding("file", "empty_file", None, "error", f"{path}: empty file, expected a header row"))
        for path in self.header_only_files:
            found.append(Finding("file", "no_rows", None, "error", f"{path}: header only, no data rows"))
        if self.bad_rows.count:
            found.append(
                Finding(
                    "file",
                    "malformed_rows",
                    None,
                    "error",
                    f"{self.bad_rows.count} row(s) with the wrong number of fields, skipped: "
                    + "; ".join(self.bad_rows.examples),
                    {"count": self.bad_rows.count},
                )
            )
        for column, problems in sorted(self.type_errors.items()):
            share = problems.count / max(self.rows, 1)
            found.append(
                Finding(
                    "schema",
                    "wrong_type",
                    column,
                    "error",
                    f"{problems.count} value(s) ({share:.1%}) are not numbers, "
                    f"e.g. {', '.join(map(repr, problems.examples))}",
                    {"count": problems.count, "examples": problems.examples},
                )
            )
        for column, problems in sorted(self.non_integers.items()):
            found.append(
                Finding(
                    "schema",
                    "not_an_integer",
                    column,
                    "error",
                    f"{problems.count} value(s) are not whole numbers, e.g. {', '.join(map(repr, problems.examples))}",
                    {"count": problems.count, "examples": problems.examples},
                )
            )
        return found


def _as_list_array(values: pa.Array) -> pa.ListArray:
    """One value per row as TFDV's list<value> column; a missing value is a null list."""
    valid = np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(valid, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.drop_null(), mask=pa.array(~valid))


def _to_number(column: str, text: pa.Array, feature_type: int, report: DecodeReport) -> pa.Array:
    try:
        numbers = pc.cast(text, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Slow path only for a column that has bad values: find and count them, keep the rest.
        values = text.to_pylist()
        parsed: list[float | None] = []
        bad: list[str] = []
        for value in values:
            if value is None:
                parsed.append(None)
                continue
            try:
                parsed.append(float(value))
            except ValueError:
                parsed.append(None)
                bad.append(value)
        report.type_errors.setdefault(column, ColumnProblems()).add(len(bad), bad[:MAX_EXAMPLES])
        numbers = pa.array(parsed, type=pa.float64())
    if feature_type != INT:
        return numbers
    whole = pc.equal(numbers, pc.floor(numbers))
    if not pc.all(pc.or_kleene(whole, pc.is_null(numbers))).as_py():
        fractional = pc.filter(numbers, pc.invert(pc.fill_null(whole, True)))
        report.non_integers.setdefault(column, ColumnProblems()).add(
            len(fractional), [repr(v) for v in fractional.slice(0, MAX_EXAMPLES).to_pylist()]
        )
        numbers = pc.if_else(pc.fill_null(whole, True), numbers, pa.scalar(None, pa.float64()))
    return pc.cast(numbers, pa.int64())


def _record_batch(table_batch: pa.RecordBatch, feature_types: dict[str, int], report: DecodeReport) -> pa.RecordBatch:
    arrays, names = [], []
    for name, text in zip(table_batch.schema.names, table_batch.columns, strict=True):
        feature_type = feature_types.get(name, BYTES)
        values = text if feature_type == BYTES else _to_number(name, text, feature_type, report)
        arrays.append(_as_list_array(values))
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names)


def _sniff_delimiter(first_line: str, expected_columns: int) -> str | None:
    if first_line.count(",") + 1 >= max(2, expected_columns // 2):
        return None
    for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
        if first_line.count(delimiter) + 1 >= max(2, expected_columns // 2):
            return name
    return None


def decode_csv(
    handle: IO[bytes], path: str, feature_types: dict[str, int], report: DecodeReport
) -> Iterator[pa.RecordBatch]:
    """Yield TFDV record batches of one CSV file; problems go to `report`, never raise for bad data."""
    report.files.append(path)
    stream = handle if isinstance(handle, io.BufferedIOBase) else io.BufferedReader(handle)
    head = stream.peek(1 << 16)[: 1 << 16]
    if not head.strip():
        report.empty_files.append(path)
        return
    if b"\x00" in head:
        report.fatal.append((path, "binary data, not a CSV text file"))
        return
    try:
        first_line = codecs.decode(head.split(b"\n", 1)[0], "utf-8", errors="strict")
    except UnicodeDecodeError:
        report.fatal.append((path, "not UTF-8 text: binary or wrongly encoded file"))
        return
    if delimiter := _sniff_delimiter(first_line, len(feature_types)):
        report.fatal.append((path, f"the header is separated by {delimiter}, not commas: {first_line[:120]!r}"))
        return

    def on_invalid_row(row: Any) -> str:
        line = row.number if row.number is not None else "?"
        report.bad_rows.add(1, [f"{path}:{line}: {row.actual_columns} fields, header has {row.expected_columns}"])
        return "skip"

    header = [name.strip() for name in first_line.rstrip("\r").split(",")]
    rows = 0
    try:
        reader = pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES, use_threads=True),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=True
            ),
        )
        for batch in reader:
            rows += batch.num_rows
            report.rows += batch.num_rows
            if batch.num_rows:
                yield _record_batch(batch, feature_types, report)
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "utf8" in message.lower():
            message = "not UTF-8 text: binary or wrongly encoded data"
        report.fatal.append((path, f"unreadable CSV after {rows} good rows: {message}"))
        return
    if rows == 0 and not report.bad_rows.count:
        report.header_only_files.append(path)
