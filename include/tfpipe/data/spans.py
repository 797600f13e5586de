"""Monthly data spans: the unit of new data, of backfills and of artifact partitions."""

from __future__ import annotations

import datetime as dt
import re

_SPAN = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def span_of_timestamp(seconds: float) -> str:
    """The monthly span (YYYY-MM, UTC) that a Unix time falls in."""
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m")


def parse_span(span: str) -> tuple[dt.datetime, dt.datetime]:
    """The [start, end) interval of a span, in UTC. Raises ValueError for a malformed span."""
    match = _SPAN.match(span)
    if not match:
        raise ValueError(f"span {span!r} is not of the form YYYY-MM")
    year, month = int(match.group(1)), int(match.group(2))
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def span_folder(span: str) -> str:
    return f"span={span}"


def shift_span(span: str, months: int) -> str:
    """The span `months` later (earlier if negative)."""
    start, _ = parse_span(span)
    index = start.year * 12 + start.month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def spans_between(first: str, last: str) -> list[str]:
    """Every span from `first` to `last`, both included; empty if `last` is before `first`."""
    spans = []
    span = first
    while span <= last:
        spans.append(span)
        span = shift_span(span, 1)
    return spans
