"""One HTML page per validation run that a person looks at instead of reading logs or protos.

The task log ends with a short text summary of the findings; this report is where someone goes next
to see *why*: every feature's numbers and distribution, this span next to the baseline, and the
findings pinned to the features they concern. It must open anywhere, including on machines without
internet and in artifact viewers that block scripts, so it is a single file with inline CSS and
inline SVG charts drawn here (no plotting library in the ML runtime, no CDN). The SVG code is
deterministic so that the same statistics give the same bytes, which keeps reports diffable and
cacheable.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import jinja2
from markupsafe import Markup, escape
from tensorflow_metadata.proto.v0 import statistics_pb2

from tfpipe.validation.findings import Finding

DatasetFeatureStatisticsList = statistics_pb2.DatasetFeatureStatisticsList
FeatureNameStatistics = statistics_pb2.FeatureNameStatistics

CURRENT_COLOR = "#3366cc"
BASELINE_COLOR = "#e8912d"
AXIS_COLOR = "#666666"
GRID_COLOR = "#e4e4e4"

TOP_CATEGORIES = 10
DEFAULT_BINS = 10
MAX_BINS = 30
LABEL_CHARS = 30
NO_VALUE = "\u2013"

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def render_validation_report(
    path: pathlib.Path,
    *,
    title: str,
    statistics: DatasetFeatureStatisticsList,
    baseline: DatasetFeatureStatisticsList | None = None,
    baseline_name: str = "previous span",
    findings: list[Finding],
    links: dict[str, str] | None = None,
) -> None:
    """Write the report for `statistics` (and `baseline`, if given) with `findings` to `path`."""
    current = statistics.datasets[0] if statistics.datasets else statistics_pb2.DatasetFeatureStatistics()
    base = None
    if baseline is not None:
        base = baseline.datasets[0] if baseline.datasets else statistics_pb2.DatasetFeatureStatistics()
    features = _features(current, base, findings)
    anchors = {feature.name: feature.anchor for feature in features}
    ordered_findings = sorted(findings, key=lambda f: (f.severity != "error", f.column or "", f.check, f.rule))
    error_count = sum(1 for f in findings if f.severity == "error")
    context = {
        "title": title,
        "passed": error_count == 0,
        "error_count": error_count,
        "warning_count": sum(1 for f in findings if f.severity == "warning"),
        "num_examples": _integer(current.num_examples),
        "baseline_name": baseline_name,
        "baseline_examples": _integer(base.num_examples) if base is not None else None,
        "extra_datasets": max(0, len(statistics.datasets) - 1),
        "links": [(name, href) for name, href in (links or {}).items() if _safe_href(href)],
        "findings": [
            {"finding": f, "anchor": anchors.get(f.column) if f.column else None, "details": _details(f)}
            for f in ordered_findings
        ],
        "features": [_feature_view(feature, current, base, baseline_name) for feature in features],
        "current_color": CURRENT_COLOR,
        "baseline_color": BASELINE_COLOR,
    }
    html = _environment().from_string(_TEMPLATE).render(context)
    path.write_text(html, encoding="utf-8", errors="replace")


# --- which features, in which order -------------------------------------------------------------


@dataclass
class _Feature:
    name: str
    anchor: str
    current: FeatureNameStatistics | None
    baseline: FeatureNameStatistics | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def rank(self) -> int:
        if any(f.severity == "error" for f in self.findings):
            return 0
        return 1 if self.findings else 2


def _features(
    current: statistics_pb2.DatasetFeatureStatistics,
    baseline: statistics_pb2.DatasetFeatureStatistics | None,
    findings: list[Finding],
) -> list[_Feature]:
    by_name: dict[str, _Feature] = {}
    for stats in current.features:
        by_name.setdefault(_feature_name(stats), _Feature(_feature_name(stats), "", None, None)).current = stats
    for stats in baseline.features if baseline is not None else ():
        by_name.setdefault(_feature_name(stats), _Feature(_feature_name(stats), "", None, None)).baseline = stats
    for finding in findings:
        if finding.column in by_name:
            by_name[finding.column].findings.append(finding)
    # Stable sort: within a rank, features keep the data's column order, then baseline-only ones.
    features = sorted(by_name.values(), key=lambda feature: feature.rank)
    used: set[str] = set()
    for feature in features:
        slug = "f-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", feature.name).strip("-") or "feature")
        anchor, suffix = slug, 2
        while anchor in used:
            anchor, suffix = f"{slug}-{suffix}", suffix + 1
        used.add(anchor)
        feature.anchor = anchor
        feature.findings.sort(key=lambda f: (f.severity != "error", f.check, f.rule))
    return features


def _feature_name(stats: FeatureNameStatistics) -> str:
    return ".".join(stats.path.step) if stats.path.step else stats.name


def _common(stats: FeatureNameStatistics) -> statistics_pb2.CommonStatistics | None:
    kind = stats.WhichOneof("stats")
    if kind in ("num_stats", "string_stats", "bytes_stats", "struct_stats"):
        return getattr(stats, kind).common_stats
    return None


def _type_name(stats: FeatureNameStatistics) -> str:
    return FeatureNameStatistics.Type.Name(stats.type)


# --- what one feature section shows -------------------------------------------------------------


_KINDS = {"num_stats": "numeric", "string_stats": "categorical", "bytes_stats": "bytes", "struct_stats": "struct"}


def _feature_view(
    feature: _Feature,
    current: statistics_pb2.DatasetFeatureStatistics,
    baseline: statistics_pb2.DatasetFeatureStatistics | None,
    baseline_name: str,
) -> dict:
    flagged = bool(feature.findings)
    notes = []
    if baseline is not None and feature.current is None:
        notes.append(f"Only in {baseline_name}: this span has no such feature.")
    elif baseline is not None and feature.baseline is None:
        notes.append(f"Not in {baseline_name}: new in this span.")
    if feature.current is not None and feature.baseline is not None and feature.current.type != feature.baseline.type:
        notes.append(
            f"Type changed: {_type_name(feature.current)} here, {_type_name(feature.baseline)} in {baseline_name}."
        )
    shown = feature.current or feature.baseline
    assert shown is not None
    kind = shown.WhichOneof("stats")
    series = [("this span", CURRENT_COLOR, feature.current)]
    if baseline is not None:
        series.append((baseline_name, BASELINE_COLOR, feature.baseline))
    present = [(label, color, stats) for label, color, stats in series if stats is not None]
    if kind == "num_stats":
        chart = _numeric_chart(present, flagged)
    elif kind == "string_stats":
        chart = _categorical_chart(present, flagged)
    else:
        chart = None
    missing = _missing_share(feature.current, current.num_examples) if feature.current is not None else None
    columns = ["this span"] + ([baseline_name] if baseline is not None else [])
    rows = _facts(
        feature.current,
        current.num_examples,
        feature.baseline if baseline is not None else None,
        baseline.num_examples if baseline is not None else 0,
        baseline is not None,
    )
    return {
        "name": feature.name,
        "anchor": feature.anchor,
        "type": _type_name(shown),
        "kind": _KINDS.get(kind or "", "no statistics"),
        "rank": feature.rank,
        "findings": [{"finding": f, "details": _details(f)} for f in feature.findings],
        "notes": notes,
        "columns": columns,
        "facts": rows,
        "chart": chart,
        "missing": NO_VALUE if missing is None else _percent(missing),
    }


def _facts(
    current: FeatureNameStatistics | None,
    current_examples: int,
    baseline: FeatureNameStatistics | None,
    baseline_examples: int,
    compare: bool,
) -> list[tuple[str, list[str]]]:
    sides = [_side_facts(current, current_examples)]
    if compare:
        sides.append(_side_facts(baseline, baseline_examples))
    labels: list[str] = []
    for side in sides:
        labels.extend(label for label in side if label not in labels)
    return [(label, [side.get(label, NO_VALUE) for side in sides]) for label in labels]


def _side_facts(stats: FeatureNameStatistics | None, num_examples: int) -> dict[str, str]:
    if stats is None:
        return {}
    common = _common(stats)
    facts: dict[str, str] = {}
    if common is not None:
        facts["count"] = _integer(common.num_non_missing)
        share = _missing_share(stats, num_examples)
        facts["missing"] = NO_VALUE if share is None else f"{_percent(share)} ({_integer(common.num_missing)})"
        if common.max_num_values > 1:
            facts["values per example"] = f"{_number(common.min_num_values)} to {_number(common.max_num_values)}"
    kind = stats.WhichOneof("stats")
    if kind == "num_stats" and common is not None and common.num_non_missing > 0:
        num = stats.num_stats
        percentiles = dict(_percentiles(stats))
        facts["min"] = _number(num.min)
        if "10th pct" in percentiles:
            facts["10th pct"] = _number(percentiles["10th pct"])
        # The proto's median has no presence; 0.0 outside [min, max] can only mean "not computed".
        if num.median != 0 or num.min <= 0 <= num.max:
            facts["median"] = _number(num.median)
        if "90th pct" in percentiles:
            facts["90th pct"] = _number(percentiles["90th pct"])
        facts["max"] = _number(num.max)
        facts["mean"] = _number(num.mean)
        facts["std dev"] = _number(num.std_dev)
        values = common.tot_num_values or common.num_non_missing
        facts["zeros"] = f"{_integer(num.num_zeros)} ({_percent(num.num_zeros / values)})" if values else NO_VALUE
    elif kind == "string_stats" and common is not None and common.num_non_missing > 0:
        facts["unique"] = _integer(stats.string_stats.unique)
        facts["avg length"] = _number(stats.string_stats.avg_length)
    return facts


def _percentiles(stats: FeatureNameStatistics) -> list[tuple[str, float]]:
    """The 10th and 90th percentiles from the quantiles histogram: where most values lie when the tail is long."""
    for histogram in stats.num_stats.histograms:
        buckets = histogram.buckets
        if histogram.type == statistics_pb2.Histogram.QUANTILES and buckets and len(buckets) % 10 == 0:
            tenth = len(buckets) // 10
            return [("10th pct", buckets[tenth - 1].high_value), ("90th pct", buckets[-tenth].low_value)]
    return []


def _missing_share(stats: FeatureNameStatistics, num_examples: int) -> float | None:
    common = _common(stats)
    if common is None or num_examples <= 0:
        return None
    return common.num_missing / num_examples


def _details(finding: Finding) -> str:
    if not finding.details:
        return ""
    text = json.dumps(finding.details, sort_keys=True, default=str, ensure_ascii=False)
    return text if len(text) <= 300 else text[:299] + "…"


# --- numeric distribution -----------------------------------------------------------------------


def _histogram(stats: FeatureNameStatistics) -> tuple[list[tuple[float, float, float]], bool] | None:
    """The standard histogram's buckets (or the quantiles' if there is none), and whether they are quantiles."""
    histograms = stats.num_stats.histograms
    for kind in (statistics_pb2.Histogram.STANDARD, statistics_pb2.Histogram.QUANTILES):
        for histogram in histograms:
            if histogram.type == kind and histogram.buckets:
                buckets = [(b.low_value, b.high_value, b.sample_count) for b in histogram.buckets]
                if sum(count for _, _, count in buckets) > 0 and all(map(_finite, _flatten(buckets))):
                    return buckets, kind == statistics_pb2.Histogram.QUANTILES
    return None


def _rebin(buckets: list[tuple[float, float, float]], low: float, high: float, bins: int) -> list[float]:
    """Counts in `bins` equal-width bins over [low, high], spreading each bucket evenly over its range.

    Two spans' histograms have different bucket edges (each spans its own min..max, and quantile
    buckets vary in width), so both are put on the same bins before they are compared.
    """
    counts = [0.0] * bins
    width = (high - low) / bins
    for bucket_low, bucket_high, count in buckets:
        if count <= 0:
            continue
        if bucket_high <= bucket_low or width <= 0:
            index = 0 if width <= 0 else min(bins - 1, max(0, int((bucket_low - low) / width)))
            counts[index] += count
            continue
        for index in range(bins):
            edge_low, edge_high = low + index * width, low + (index + 1) * width
            overlap = min(bucket_high, edge_high) - max(bucket_low, edge_low)
            if overlap > 0:
                counts[index] += count * overlap / (bucket_high - bucket_low)
    return counts


def _numeric_chart(series: list[tuple[str, str, FeatureNameStatistics]], flagged: bool) -> Markup | None:
    histograms = []
    for label, color, stats in series:
        histogram = _histogram(stats)
        if histogram is not None:
            histograms.append((label, color, histogram[0], histogram[1]))
    if not histograms:
        return None
    low = min(low for _, _, buckets, _ in histograms for low, _, _ in buckets)
    high = max(high for _, _, buckets, _ in histograms for _, high, _ in buckets)
    bins = 1 if high <= low else min(MAX_BINS, max(DEFAULT_BINS, *(len(b) for _, _, b, _ in histograms)))
    shares = []
    for label, color, buckets, from_quantiles in histograms:
        counts = _rebin(buckets, low, high, bins)
        total = sum(counts)
        shares.append((label, color, [(c / total, c) for c in counts], from_quantiles))

    width, height = 540, 230
    left, right, top, bottom = 56, 30, 30 if len(shares) > 1 else 12, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = _axis_ticks(max(share for _, _, values, _ in shares for share, _ in values))
    y_top = ticks[-1]
    parts = [_svg_open(width, height, flagged)]
    for tick in ticks:
        y = top + plot_h - plot_h * tick / y_top
        parts.append(_line(left, y, left + plot_w, y, GRID_COLOR))
        parts.append(_text(left - 6, y + 4, _percent_tick(tick, ticks), anchor="end"))
    # A constant feature gets one narrow bar in the middle rather than a wall of colour.
    bin_w, origin = (plot_w / bins, left) if bins > 1 else (plot_w / 5, left + 2 * plot_w / 5)
    slot = (bin_w - 2) / len(shares)
    for position, (label, color, values, _) in enumerate(shares):
        for index, (share, count) in enumerate(values):
            bar_h = plot_h * share / y_top
            # A bucket with a real row (an outlier) stays visible; TFDV's interpolated crumbs do not.
            if count >= 0.5:
                bar_h = max(bar_h, 1.0)
            x = origin + index * bin_w + 1 + position * slot
            edge_low = low + index * (high - low) / bins
            edge_high = low + (index + 1) * (high - low) / bins
            tip = f"{label}: {_number(edge_low)} to {_number(edge_high)}: {_percent(share)} (≈{_integer(count)})"
            parts.append(
                f'<rect x="{_c(x)}" y="{_c(top + plot_h - bar_h)}" width="{_c(max(slot, 1.0))}" '
                f'height="{_c(bar_h)}" fill="{color}"><title>{escape(tip)}</title></rect>'
            )
    parts.append(_line(left, top + plot_h, left + plot_w, top + plot_h, AXIS_COLOR))
    parts.append(_line(left, top, left, top + plot_h, AXIS_COLOR))
    edges = [low + index * (high - low) / bins for index in range(bins + 1)] if bins > 1 else [low]
    every = 1 if bins <= 6 else math.ceil(bins / 6)
    step = every * (high - low) / bins if bins > 1 else 0.0
    for index, edge in enumerate(edges):
        if index % every and index != len(edges) - 1:
            continue
        x = origin + (index * bin_w if bins > 1 else bin_w / 2)
        parts.append(_line(x, top + plot_h, x, top + plot_h + 4, AXIS_COLOR))
        parts.append(_text(x, top + plot_h + 16, _value_tick(edge, step), anchor="middle"))
    quantiles = any(from_quantiles for *_, from_quantiles in shares)
    caption = "value (buckets estimated from quantiles)" if quantiles else "value"
    parts.append(_text(left + plot_w / 2, height - 8, caption, anchor="middle", css="axis-title"))
    parts.append(
        f'<text x="14" y="{_c(top + plot_h / 2)}" text-anchor="middle" class="axis-title" '
        f'transform="rotate(-90 14 {_c(top + plot_h / 2)})">% of values</text>'
    )
    if len(shares) > 1:
        parts.append(_legend(left, 8, [(label, color) for label, color, _, _ in shares]))
    parts.append("</svg>")
    return Markup("".join(parts))


# --- categorical distribution -------------------------------------------------------------------


def _frequencies(stats: FeatureNameStatistics) -> tuple[list[tuple[str, float]], bool]:
    """Values by falling frequency, and whether every value is listed (so an absent one has 0)."""
    string_stats = stats.string_stats
    found: dict[str, float] = {}
    for item in string_stats.top_values:
        found.setdefault(item.value, item.frequency)
    for bucket in string_stats.rank_histogram.buckets:
        found.setdefault(bucket.label, bucket.sample_count)
    ordered = sorted(found.items(), key=lambda item: (-item[1], item[0]))
    return ordered, len(found) >= string_stats.unique


def _categorical_chart(series: list[tuple[str, str, FeatureNameStatistics]], flagged: bool) -> Markup | None:
    sides = []
    for label, color, stats in series:
        common = stats.string_stats.common_stats
        total = common.tot_num_values or common.num_non_missing
        values, complete = _frequencies(stats)
        if total > 0 and values:
            sides.append((label, color, dict(values), values, complete, total))
    if not sides:
        return None
    categories = [value for value, _ in sides[0][3][:TOP_CATEGORIES]]
    for _, _, _, values, _, _ in sides[1:]:
        categories.extend(value for value, _ in values[:TOP_CATEGORIES] if value not in categories)

    row_h = 14 + 10 * len(sides)
    label_w, bar_x_end, width = 200, 420, 540
    top = 30 if len(sides) > 1 else 8
    height = top + row_h * len(categories) + 8
    peak = max(lookup.get(category, 0.0) / total for _, _, lookup, _, _, total in sides for category in categories)
    peak = peak or 1.0
    parts = [_svg_open(width, height, flagged)]
    for row, category in enumerate(categories):
        y = top + row * row_h
        shown = category if len(category) <= LABEL_CHARS else category[: LABEL_CHARS - 1] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{_c(y + row_h / 2 + 3)}" text-anchor="end">'
            f"<title>{escape(_clean(category))}</title>{escape(_clean(shown))}</text>"
        )
        for position, (label, color, lookup, _, complete, total) in enumerate(sides):
            bar_y = y + 4 + position * 10
            if category in lookup or complete:
                count = lookup.get(category, 0.0)
                share = count / total
                bar_w = (bar_x_end - label_w) * share / peak
                if share > 0:
                    bar_w = max(bar_w, 1.0)
                text = f"{_integer(count)} ({_percent(share)})" if position == 0 else _percent(share)
            else:
                bar_w, text = 0.0, "not in top values"
            tip = f"{label}: {category}: {text}"
            parts.append(
                f'<rect x="{label_w}" y="{_c(bar_y)}" width="{_c(bar_w)}" height="9" fill="{color}">'
                f"<title>{escape(_clean(tip))}</title></rect>"
            )
            parts.append(_text(label_w + bar_w + 4, bar_y + 8, text, css="bar-label"))
    parts.append(_line(label_w, top, label_w, top + row_h * len(categories), AXIS_COLOR))
    if len(sides) > 1:
        parts.append(_legend(label_w, 8, [(label, color) for label, color, *_ in sides]))
    parts.append("</svg>")
    chart = "".join(parts)
    label, _, lookup, _, _, total = sides[0]
    stats = next(stats for name, _, stats in series if name == label)
    hidden = stats.string_stats.unique - sum(1 for category in categories if lookup.get(category, 0.0) > 0)
    if hidden > 0:
        remaining = max(0.0, 1.0 - sum(lookup.get(category, 0.0) for category in categories) / total)
        note = f"{label}: {_integer(hidden)} more values not shown ({_percent(remaining)} of values)"
        chart += f'<p class="chart-note">{escape(_clean(note))}</p>'
    return Markup(chart)


# --- SVG pieces and number formats --------------------------------------------------------------


def _svg_open(width: int, height: int, flagged: bool) -> str:
    css = "chart flagged" if flagged else "chart"
    return f'<svg class="{css}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'


def _legend(x: float, y: float, entries: list[tuple[str, str]]) -> str:
    parts = ['<g class="legend">']
    for label, color in entries:
        parts.append(f'<rect x="{_c(x)}" y="{_c(y)}" width="10" height="10" fill="{color}"/>')
        parts.append(_text(x + 14, y + 9, label))
        x += 24 + 6.5 * len(label)
    parts.append("</g>")
    return "".join(parts)


def _line(x1: float, y1: float, x2: float, y2: float, color: str) -> str:
    return f'<line x1="{_c(x1)}" y1="{_c(y1)}" x2="{_c(x2)}" y2="{_c(y2)}" stroke="{color}"/>'


def _text(x: float, y: float, text: str, *, anchor: str = "start", css: str = "") -> str:
    css_attr = f' class="{css}"' if css else ""
    return f'<text x="{_c(x)}" y="{_c(y)}" text-anchor="{anchor}"{css_attr}>{escape(_clean(text))}</text>'


def _c(value: float) -> str:
    """A coordinate, rounded so that the same chart is always the same bytes."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _axis_ticks(maximum: float) -> list[float]:
    if maximum <= 0:
        return [0.0, 0.5, 1.0]
    raw = maximum / 4
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    steps = math.ceil(maximum / step - 1e-9)
    return [index * step for index in range(steps + 1)]


def _percent_tick(tick: float, ticks: list[float]) -> str:
    step = (ticks[1] - ticks[0]) * 100
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{tick * 100:.{decimals}f}%"


def _value_tick(value: float, step: float) -> str:
    """An axis label with just enough digits to tell it from its neighbours."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if step <= 0:
        return _number(value)
    if 1e-3 <= magnitude < 1e6:
        decimals = max(0, min(6, 1 - math.floor(math.log10(step))))
        text = f"{value:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    digits = min(8, max(2, math.floor(math.log10(magnitude)) - math.floor(math.log10(step)) + 2))
    return _exponent(f"{value:.{digits}g}")


def _number(value: float) -> str:
    if not _finite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1e6:
        return f"{value:,.0f}"
    return _exponent(f"{value:.6g}")


def _integer(value: float) -> str:
    return f"{round(value):,}"


def _percent(share: float) -> str:
    if share == 0:
        return "0%"
    if share < 0.001:
        return "<0.1%"
    return f"{share * 100:.1f}%"


def _exponent(text: str) -> str:
    return text.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _flatten(buckets: Iterable[tuple[float, float, float]]) -> Iterable[float]:
    for bucket in buckets:
        yield from bucket


def _clean(text: str) -> str:
    """Control characters are not allowed in HTML text; category values from real data can hold them."""
    return _CONTROL_CHARS.sub("\ufffd", text)


def _safe_href(href: str) -> bool:
    return not href.strip().lower().startswith(("javascript:", "data:", "vbscript:"))


def _finalize(value: object) -> object:
    if isinstance(value, str) and not isinstance(value, Markup):
        return _clean(value)
    return value


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
  background: #f6f7f9; }
main { max-width: 1120px; margin: 0 auto; padding: 20px 24px 60px; }
header { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 16px 20px; }
h1 { font-size: 22px; margin: 0 0 8px; display: flex; align-items: center; gap: 12px; }
h2 { font-size: 17px; margin: 28px 0 10px; }
h3 { font-size: 16px; margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-size: 14px;
  font-weight: 700; letter-spacing: .05em; }
.pass { background: #2e7d32; } .fail { background: #c62828; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 22px; color: #444; }
.meta b { color: #222; }
.links a { margin-right: 14px; }
table { border-collapse: collapse; background: #fff; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #e6e6e6; vertical-align: top; }
th { background: #f0f1f3; font-weight: 600; }
.findings { width: 100%; border: 1px solid #ddd; }
tr.error td { background: #fdecea; }
tr.warning td { background: #fff8e1; }
.sev { font-weight: 700; text-transform: uppercase; font-size: 12px; }
.sev-error { color: #c62828; } .sev-warning { color: #a86500; }
.details { color: #666; font-size: 12px; font-family: ui-monospace, Menlo, Consolas, monospace;
  word-break: break-all; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.index { border: 1px solid #ddd; }
.index td, .index th { padding: 3px 10px; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
section.feature { background: #fff; border: 1px solid #ddd; border-left: 5px solid #cfd4da; border-radius: 6px;
  padding: 14px 18px; margin: 14px 0; }
section.feature.rank-0 { border-left-color: #c62828; }
section.feature.rank-1 { border-left-color: #e8a200; }
.feature-head { display: flex; align-items: baseline; gap: 12px; flex-wrap: wrap; margin-bottom: 10px; }
.kind { color: #666; font-size: 13px; }
.body { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
.facts td { padding: 2px 10px; border-bottom: 1px solid #f0f0f0; }
.facts th { padding: 2px 10px; font-size: 12px; }
.box { border-radius: 5px; padding: 8px 12px; margin: 0 0 10px; }
.box.error { background: #fdecea; border: 1px solid #e57373; }
.box.warning { background: #fff8e1; border: 1px solid #ffcc80; }
.box ul { margin: 0; padding-left: 18px; }
.note { color: #555; font-style: italic; margin: 0 0 8px; }
svg.chart { background: #fff; border: 1px solid #e2e2e2; border-radius: 4px; font-size: 11px;
  font-family: system-ui, sans-serif; }
svg.chart text { fill: #333; }
svg.chart .axis-title { fill: #666; font-size: 11px; }
svg.chart .bar-label { fill: #444; font-size: 10px; }
svg.chart.flagged { border: 2px solid #c62828; }
.chart-note { color: #666; font-size: 12px; margin: 4px 0 0; }
.no-chart { color: #777; font-style: italic; padding: 8px 0; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
a { color: #1a56b0; }
</style>
</head>
<body>
<main>
<header>
  <h1><span class="badge {{ 'pass' if passed else 'fail' }}">{{ 'PASS' if passed else 'FAIL' }}</span>
    {{ title }}</h1>
  <div class="meta">
    <span><b>{{ error_count }}</b> error{{ '' if error_count == 1 else 's' }}</span>
    <span><b>{{ warning_count }}</b> warning{{ '' if warning_count == 1 else 's' }}</span>
    <span><b>{{ num_examples }}</b> rows in this span</span>
    {% if baseline_examples is not none %}
    <span><b>{{ baseline_examples }}</b> rows in {{ baseline_name }}
      (<span class="swatch" style="background: {{ current_color }}"></span>this span,
      <span class="swatch" style="background: {{ baseline_color }}"></span>{{ baseline_name }})</span>
    {% endif %}
    {% if extra_datasets %}
    <span>showing the first dataset; {{ extra_datasets }} more (slices) not shown</span>
    {% endif %}
  </div>
  {% if links %}
  <p class="links">{% for name, href in links %}<a href="{{ href }}">{{ name }}</a>{% endfor %}</p>
  {% endif %}
</header>

<h2>Findings</h2>
{% if findings %}
<table class="findings">
  <thead><tr><th>severity</th><th>column</th><th>check / rule</th><th>message</th></tr></thead>
  <tbody>
  {% for row in findings %}
    <tr class="{{ row.finding.severity }}">
      <td><span class="sev sev-{{ row.finding.severity }}">{{ row.finding.severity }}</span></td>
      <td>{% if row.anchor %}<a href="#{{ row.anchor }}"><code>{{ row.finding.column }}</code></a>
        {%- elif row.finding.column is not none %}<code>{{ row.finding.column }}</code>
        {%- else %}(dataset){% endif %}</td>
      <td><code>{{ row.finding.check }} / {{ row.finding.rule }}</code></td>
      <td>{{ row.finding.message }}{% if row.details %}<div class="details">{{ row.details }}</div>{% endif %}</td>
    </tr>
  {% endfor %}
  </tbody>
</table>
{% else %}
<p>No findings.</p>
{% endif %}

<h2>Features</h2>
<table class="index">
  <thead><tr><th>feature</th><th>type</th><th class="num">missing</th><th>findings</th></tr></thead>
  <tbody>
  {% for feature in features %}
    <tr><td><a href="#{{ feature.anchor }}"><code>{{ feature.name }}</code></a></td>
      <td>{{ feature.type }}</td>
      <td class="num">{{ feature.missing }}</td>
      <td>{% for row in feature.findings %}<span class="sev sev-{{ row.finding.severity }}">
        {{- row.finding.rule }}</span>{{ ' ' if not loop.last }}{% endfor %}</td></tr>
  {% endfor %}
  </tbody>
</table>

{% for feature in features %}
<section class="feature rank-{{ feature.rank }}" id="{{ feature.anchor }}">
  <div class="feature-head"><h3>{{ feature.name }}</h3>
    <span class="kind">{{ feature.type }} · {{ feature.kind }}</span></div>
  {% for row in feature.findings %}
  <div class="box {{ row.finding.severity }}"><span class="sev sev-{{ row.finding.severity }}">
    {{- row.finding.severity }}</span> <code>{{ row.finding.check }} / {{ row.finding.rule }}</code>:
    {{ row.finding.message }}{% if row.details %}<div class="details">{{ row.details }}</div>{% endif %}</div>
  {% endfor %}
  {% for note in feature.notes %}<p class="note">{{ note }}</p>{% endfor %}
  <div class="body">
    <table class="facts">
      {% if feature.columns|length > 1 %}
      <thead><tr><th></th>{% for column in feature.columns %}<th class="num">{{ column }}</th>{% endfor %}</tr></thead>
      {% endif %}
      <tbody>
      {% for label, values in feature.facts %}
        <tr><td>{{ label }}</td>{% for value in values %}<td class="num">{{ value }}</td>{% endfor %}</tr>
      {% endfor %}
      </tbody>
    </table>
    <div>
      {% if feature.chart %}{{ feature.chart }}{% else %}<div class="no-chart">no values to plot</div>{% endif %}
    </div>
  </div>
</section>
{% endfor %}
</main>
</body>
</html>
"""
