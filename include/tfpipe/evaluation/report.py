"""One HTML page per evaluation that shows why a candidate model was blessed or not.

The blessing JSON says what failed; this page shows where: the decision and its reasons first, the
overall metrics against the champion and the thresholds, then one dot plot per slice feature and
metric, with the threshold drawn in, failing slices in red and slices too small to judge in grey.
Like the validation report it is one file with inline CSS and inline SVG drawn here, with no
scripts and no external resources, so that it opens in artifact viewers that block scripts, and
the same inputs give the same bytes.
"""

from __future__ import annotations

import math
import pathlib
import re
import typing
from dataclasses import dataclass

from markupsafe import Markup, escape

from tfpipe.config import HIGHER_IS_BETTER, EvaluationMetric
from tfpipe.validation.report import (
    AXIS_COLOR,
    BASELINE_COLOR,
    CURRENT_COLOR,
    GRID_COLOR,
    LABEL_CHARS,
    NO_VALUE,
    _axis_ticks,
    _c,
    _clean,
    _environment,
    _integer,
    _line,
    _number,
    _safe_href,
    _svg_open,
    _text,
    _value_tick,
)

FAIL_COLOR = "#c62828"
NOT_JUDGED_COLOR = "#b0b0b0"
STRIPE_COLOR = "#f6f7f9"

METRIC_ORDER: tuple[str, ...] = typing.get_args(EvaluationMetric)
# Beyond this many slices (companies can be many) a chart shows the largest ones and says how many it left out.
MAX_ROWS = 30

# Chart geometry: slice labels on the left, the dot plot in the middle, example counts on the right.
CHART_WIDTH = 680
LABEL_RIGHT = 190
PLOT_LEFT = 200
PLOT_RIGHT = 560
COUNT_RIGHT = 672
CHART_TOP = 30
ROW_HEIGHT = 18


def render_evaluation_report(
    path: pathlib.Path,
    *,
    title: str,
    metrics: dict,
    blessing: dict,
    thresholds: dict,
    links: dict[str, str] | None = None,
) -> None:
    """Write the report of one evaluation (the evaluate stage's metrics and blessing) to `path`."""
    listed = [item for item in blessing.get("not_judged") or [] if isinstance(item, dict)]
    # A slice the blessing lists as not judged is grey even if the metrics do not say so.
    unjudged = {str(item.get("slice")) for item in listed}
    slices = [_Slice.from_dict(entry, unjudged) for entry in metrics.get("slices") or []]
    failures = [failure for failure in blessing.get("failures") or [] if isinstance(failure, dict)]
    failed = {(str(failure.get("slice")), str(failure.get("metric"))) for failure in failures}
    with_baseline = any(entry.baseline is not None for entry in slices)
    overall = next((entry for entry in slices if not entry.features), None)
    groups = _groups([entry for entry in slices if entry.features], thresholds.get("per_slice") or {})
    anchors = {entry.name: group.anchor for group in groups for entry in group.slices}
    if overall is not None:
        anchors[overall.name] = "overall"
    shown_metrics = _metric_names(slices)
    not_judged = _not_judged(slices, listed)
    blessed = bool(blessing.get("blessed", blessing.get("decision") == "BLESSED"))
    context = {
        "title": title,
        "blessed": blessed,
        "baseline": _baseline_text(blessing.get("baseline") or {}),
        "baseline_uri": (blessing.get("baseline") or {}).get("model_uri"),
        "operating_threshold": _number_or_dash(metrics.get("operating_threshold")),
        "overall_examples": _integer(overall.examples) if overall is not None else NO_VALUE,
        "judged_count": sum(1 for entry in slices if entry.features and entry.judged),
        "not_judged_count": len(not_judged),
        "thresholds_configured": blessing.get("thresholds_configured"),
        "reasons": [str(reason) for reason in blessing.get("reasons") or []],
        "failures": [_failure_view(failure, anchors) for failure in failures],
        "links": [(name, href) for name, href in (links or {}).items() if _safe_href(href)],
        "with_baseline": with_baseline,
        "overall": _overall_rows(overall, thresholds.get("overall") or {}, failed, with_baseline),
        "groups": [_group_view(group, failed) for group in groups],
        "metrics": shown_metrics,
        "table": _slice_rows(overall, groups, shown_metrics, failed, with_baseline),
        "not_judged": not_judged,
        "colors": {"candidate": CURRENT_COLOR, "baseline": BASELINE_COLOR, "fail": FAIL_COLOR},
    }
    html = _environment().from_string(_TEMPLATE).render(context)
    path.write_text(html, encoding="utf-8", errors="replace")


# --- the inputs, read once ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Slice:
    name: str
    features: tuple[tuple[str, str], ...]
    examples: int
    judged: bool
    candidate: dict
    baseline: dict | None

    @classmethod
    def from_dict(cls, entry: dict, unjudged: set[str]) -> _Slice:
        candidate = entry.get("candidate") or {}
        features = tuple((str(key), str(value)) for key, value in (entry.get("features") or {}).items())
        examples = _finite(entry.get("examples"))
        if examples is None:
            examples = _finite(candidate.get("example_count")) or 0
        name = entry.get("slice") or " & ".join(f"{key}={value}" for key, value in features) or "Overall"
        judged = bool(entry.get("judged", True)) and str(name) not in unjudged
        return cls(str(name), features, int(examples), judged, candidate, entry.get("baseline"))

    def value(self, metric: str) -> float | None:
        return _finite(self.candidate.get(metric))

    def baseline_value(self, metric: str) -> float | None:
        return _finite(self.baseline.get(metric)) if self.baseline is not None else None

    @property
    def label(self) -> str:
        return " · ".join(value for _, value in self.features)

    @property
    def natural_key(self) -> tuple[float, ...] | None:
        """The slice's values as numbers (hours, days), or None when any of them is a name."""
        try:
            return tuple(float(value) for _, value in self.features)
        except ValueError:
            return None


def _finite(value: object) -> float | None:
    """A number to show and plot, or None for null, NaN, infinities and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _metric_names(slices: list[_Slice]) -> list[str]:
    found = {metric for entry in slices for metric in entry.candidate}
    found |= {metric for entry in slices for metric in entry.baseline or {}}
    return [metric for metric in METRIC_ORDER if metric in found] + sorted(found - set(METRIC_ORDER))


# --- slices grouped by the features they are cut on ---------------------------------------------


@dataclass
class _Group:
    features: tuple[str, ...]
    anchor: str
    slices: list[_Slice]
    bounds: dict[str, dict]

    @property
    def title(self) -> str:
        return " \u00d7 ".join(self.features)

    @property
    def numeric(self) -> bool:
        return all(entry.natural_key is not None for entry in self.slices)

    def ordered(self) -> list[_Slice]:
        """Hours and days in their own order; named values largest first."""
        if self.numeric:
            return sorted(self.slices, key=lambda entry: (entry.natural_key, entry.name))
        return sorted(self.slices, key=lambda entry: (-entry.examples, entry.name))


def _groups(slices: list[_Slice], per_slice: dict) -> list[_Group]:
    by_features: dict[tuple[str, ...], list[_Slice]] = {}
    for entry in slices:
        by_features.setdefault(tuple(key for key, _ in entry.features), []).append(entry)
    groups, used = [], set()
    for features, members in by_features.items():
        slug = "g-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(features)).strip("-") or "slice")
        anchor, suffix = slug, 2
        while anchor in used:
            anchor, suffix = f"{slug}-{suffix}", suffix + 1
        used.add(anchor)
        groups.append(_Group(features, anchor, members, _group_bounds(features, per_slice)))
    return groups


def _group_bounds(features: tuple[str, ...], per_slice: dict) -> dict[str, dict]:
    """The per_slice thresholds of a group: keyed "payment_type", or "a&b" for a cross (in either order)."""
    exact = per_slice.get("&".join(features))
    if exact is None:
        exact = next((v for k, v in sorted(per_slice.items()) if set(k.split("&")) == set(features)), None)
    return {metric: bounds for metric, bounds in (exact or {}).items() if isinstance(bounds, dict)}


def _group_view(group: _Group, failed: set[tuple[str, str]]) -> dict:
    names = {entry.name for entry in group.slices}
    charted = {"auc", *group.bounds, *(metric for name, metric in failed if name in names)}
    metrics = [metric for metric in METRIC_ORDER if metric in charted] + sorted(charted - set(METRIC_ORDER))
    charts = []
    for metric in metrics:
        svg, left_out = _dot_plot(group, metric, group.bounds.get(metric) or {}, failed)
        charts.append(
            {
                "metric": metric,
                "anchor": f"{group.anchor}-{re.sub(r'[^A-Za-z0-9_-]+', '-', metric)}",
                "svg": svg,
                "left_out": left_out,
            }
        )
    return {
        "title": group.title,
        "anchor": group.anchor,
        "count": len(group.slices),
        "bounds": [(metric, _bounds_text(bounds)) for metric, bounds in sorted(group.bounds.items())],
        "charts": charts,
    }


# --- the dot plot -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scale:
    """Metric value -> x coordinate, over a domain widened to round tick values."""

    low: float
    high: float
    step: float
    left: float = PLOT_LEFT
    right: float = PLOT_RIGHT

    def x(self, value: float) -> float:
        return self.left + (value - self.low) / (self.high - self.low) * (self.right - self.left)

    def ticks(self) -> list[float]:
        return [self.low + index * self.step for index in range(round((self.high - self.low) / self.step) + 1)]


def _scale(values: list[float], left: float = PLOT_LEFT, right: float = PLOT_RIGHT) -> _Scale:
    """A scale that holds every value (dots and thresholds), from one round tick to another."""
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        pad = abs(low) * 0.05 or 0.05
        low, high = low - pad, high + pad
    ticks = _axis_ticks(high - low)
    step = ticks[1] - ticks[0]
    return _Scale(math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step, step, left, right)


def _change_bounds(entry: _Slice, metric: str, bounds: dict) -> list[float]:
    """Where a change threshold puts this slice's limit: the baseline less max_drop, or plus max_rise."""
    base = entry.baseline_value(metric)
    if base is None:
        return []
    limits = []
    drop, rise = _finite(bounds.get("max_drop")), _finite(bounds.get("max_rise"))
    if drop is not None and metric in HIGHER_IS_BETTER:
        limits.append(base - drop)
    if rise is not None and metric not in HIGHER_IS_BETTER:
        limits.append(base + rise)
    return limits


def _rows(group: _Group, metric: str, failed: set[tuple[str, str]]) -> tuple[list[_Slice], int]:
    """The slices one chart shows, in order, and how many it leaves out."""
    rows = group.slices
    if len(rows) > MAX_ROWS:
        # Failing slices are always shown; the rest of the room goes to the largest slices.
        rows = sorted(rows, key=lambda entry: ((entry.name, metric) not in failed, -entry.examples, entry.name))
        rows = rows[:MAX_ROWS]
    if group.numeric:
        return sorted(rows, key=lambda entry: (entry.natural_key, entry.name)), len(group.slices) - len(rows)

    # Named values: worst first, so that the slices to look at are at the top.
    def worst_first(entry: _Slice) -> tuple:
        value = entry.value(metric)
        if value is None:
            return (1, 0.0, entry.name)
        if metric in HIGHER_IS_BETTER:
            return (0, value, entry.name)
        return (0, -abs(value - 1.0) if metric == "calibration" else -value, entry.name)

    return sorted(rows, key=worst_first), len(group.slices) - len(rows)


def _dot_plot(group: _Group, metric: str, bounds: dict, failed: set[tuple[str, str]]) -> tuple[Markup, int]:
    rows, left_out = _rows(group, metric, failed)
    lines = [(kind, value) for kind in ("min", "max") if (value := _finite(bounds.get(kind))) is not None]
    values = [value for _, value in lines]
    for entry in rows:
        values += [v for v in (entry.value(metric), entry.baseline_value(metric)) if v is not None]
        values += _change_bounds(entry, metric, bounds)
    scale = _scale(values)
    plot_bottom = CHART_TOP + ROW_HEIGHT * len(rows)
    height = plot_bottom + 40
    flagged = any((entry.name, metric) in failed for entry in rows)
    parts = [_svg_open(CHART_WIDTH, height, flagged)]
    for index in range(0, len(rows), 2):
        y = CHART_TOP + index * ROW_HEIGHT
        parts.append(f'<rect x="0" y="{y}" width="{CHART_WIDTH}" height="{ROW_HEIGHT}" fill="{STRIPE_COLOR}"/>')
    for tick in scale.ticks():
        x = scale.x(tick)
        parts.append(_line(x, CHART_TOP, x, plot_bottom, GRID_COLOR))
        parts.append(_text(x, plot_bottom + 14, _value_tick(tick, scale.step), anchor="middle"))
    parts.append(_line(PLOT_LEFT, plot_bottom, PLOT_RIGHT, plot_bottom, AXIS_COLOR))
    # Below the counts, not above them: the space above the plot is for the threshold labels.
    parts.append(_text(COUNT_RIGHT, plot_bottom + 14, "examples", anchor="end", css="axis-title"))
    for index, entry in enumerate(rows):
        parts.append(_dot_row(entry, metric, bounds, scale, CHART_TOP + index * ROW_HEIGHT + ROW_HEIGHT / 2, failed))
    for kind, value in lines:
        x = scale.x(value)
        parts.append(
            f'<line class="threshold {kind}" x1="{_c(x)}" y1="{CHART_TOP - 4}" x2="{_c(x)}" y2="{_c(plot_bottom)}" '
            f'stroke="{FAIL_COLOR}" stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
        # min's label to the left of its line, max's to the right: the two never overlap.
        anchor, shift = ("end", -4) if kind == "min" else ("start", 4)
        parts.append(_text(x + shift, CHART_TOP - 8, f"{kind} {_number(value)}", anchor=anchor, css="threshold-label"))
    direction = _direction(metric)
    caption = f"{metric} ({direction})" if direction else metric
    parts.append(_text((PLOT_LEFT + PLOT_RIGHT) / 2, height - 8, caption, anchor="middle", css="axis-title"))
    parts.append("</svg>")
    return Markup("".join(parts)), left_out


def _dot_row(entry: _Slice, metric: str, bounds: dict, scale: _Scale, y: float, failed: set[tuple[str, str]]) -> str:
    is_failed = (entry.name, metric) in failed
    state = " failed" if is_failed else (" not-judged" if not entry.judged else "")
    value, base = entry.value(metric), entry.baseline_value(metric)
    label = entry.label if len(entry.label) <= LABEL_CHARS else entry.label[: LABEL_CHARS - 1] + "…"
    parts = [
        f'<g class="row{state}">',
        f'<text x="{LABEL_RIGHT}" y="{_c(y + 4)}" text-anchor="end" class="row-label">'
        f"<title>{escape(_clean(entry.name))}</title>{escape(_clean(label))}</text>",
    ]
    for limit in _change_bounds(entry, metric, bounds):
        x = scale.x(limit)
        parts.append(
            f'<line class="change-limit" x1="{_c(x)}" y1="{_c(y - 7)}" x2="{_c(x)}" y2="{_c(y + 7)}" '
            f'stroke="{FAIL_COLOR if entry.judged else NOT_JUDGED_COLOR}" stroke-width="1.5"/>'
        )
    if value is not None and base is not None:
        parts.append(_line(scale.x(base), y, scale.x(value), y, AXIS_COLOR))
    if base is not None:
        stroke = NOT_JUDGED_COLOR if not entry.judged else BASELINE_COLOR
        tip = f"{entry.name}: baseline {metric} {_metric_text(base, metric)}"
        parts.append(_circle(scale.x(base), y, "baseline", "#fff", stroke, tip))
    if value is None:
        parts.append(_text(PLOT_LEFT + 6, y + 4, NO_VALUE, css="no-value"))
    else:
        fill = FAIL_COLOR if is_failed else (NOT_JUDGED_COLOR if not entry.judged else CURRENT_COLOR)
        tip = f"{entry.name}: {metric} {_metric_text(value, metric)}" + ("" if entry.judged else " (not judged)")
        parts.append(_circle(scale.x(value), y, "candidate" + state, fill, fill, tip))
    count = _integer(entry.examples) + ("" if entry.judged else " not judged")
    parts.append(_text(COUNT_RIGHT, y + 4, count, anchor="end", css="count"))
    parts.append("</g>")
    return "".join(parts)


def _circle(x: float, y: float, css: str, fill: str, stroke: str, tip: str) -> str:
    return (
        f'<circle class="{css}" cx="{_c(x)}" cy="{_c(y)}" r="5" fill="{fill}" stroke="{stroke}" stroke-width="1.5">'
        f"<title>{escape(_clean(tip))}</title></circle>"
    )


def _direction(metric: str) -> str:
    if metric in HIGHER_IS_BETTER:
        return "higher is better"
    if metric == "log_loss":
        return "lower is better"
    return "1 is ideal" if metric == "calibration" else ""


# --- tables -------------------------------------------------------------------------------------


def _overall_rows(overall: _Slice | None, bounds_by_metric: dict, failed: set, with_baseline: bool) -> list[dict]:
    if overall is None:
        return []
    rows = []
    for metric in _metric_names([overall]) + sorted(set(bounds_by_metric) - set(_metric_names([overall]))):
        value, base = overall.value(metric), overall.baseline_value(metric)
        bounds = bounds_by_metric.get(metric) or {}
        difference = value - base if value is not None and base is not None else None
        if (overall.name, metric) in failed:
            result, mark = "fail", "✗ fail"
        else:
            result, mark = ("pass", "✓ pass") if bounds else ("none", NO_VALUE)
        unchecked = not with_baseline and any(bounds.get(kind) is not None for kind in ("max_drop", "max_rise"))
        rows.append(
            {
                "metric": metric,
                "candidate": _metric_text(value, metric),
                "baseline": _metric_text(base, metric),
                "difference": NO_VALUE if difference is None else _signed(difference, metric),
                "trend": _trend(difference, metric),
                "thresholds": _bounds_text(bounds),
                "unchecked_change": unchecked,
                "result": result,
                "mark": mark,
            }
        )
    return rows


def _slice_rows(
    overall: _Slice | None, groups: list[_Group], metrics: list[str], failed: set, with_baseline: bool
) -> list[dict]:
    ordered = ([overall] if overall is not None else []) + [entry for group in groups for entry in group.ordered()]
    rows = []
    for entry in ordered:
        cells = []
        for metric in metrics:
            cells.append(
                {
                    "candidate": _metric_text(entry.value(metric), metric),
                    "baseline": _metric_text(entry.baseline_value(metric), metric) if with_baseline else None,
                    "failed": (entry.name, metric) in failed,
                }
            )
        rows.append({"name": entry.name, "examples": _integer(entry.examples), "judged": entry.judged, "cells": cells})
    return rows


def _not_judged(slices: list[_Slice], listed: list[dict]) -> list[dict]:
    """The blessing's list of slices not judged, and any other slice marked not judged."""
    rows = [
        {
            "slice": str(item.get("slice")),
            "examples": _integer(_finite(item.get("examples")) or 0),
            "reason": str(item.get("reason") or ""),
        }
        for item in listed
    ]
    named = {row["slice"] for row in rows}
    rows += [
        {"slice": entry.name, "examples": _integer(entry.examples), "reason": "not judged"}
        for entry in slices
        if not entry.judged and entry.name not in named
    ]
    return rows


# --- words and numbers --------------------------------------------------------------------------


def _baseline_text(baseline: dict) -> str:
    state = baseline.get("state")
    if state == "champion":
        version = baseline.get("version")
        return f"champion version {version}" if version is not None else "the champion"
    if state == "first_model":
        return "first model: judged on value thresholds alone"
    if state == "missing":
        reason = baseline.get("reason") or "no reason given"
        return f"baseline missing: {reason}"
    return "no baseline"


def _failure_view(failure: dict, anchors: dict[str, str]) -> dict:
    metric = str(failure.get("metric"))
    bound = str(failure.get("bound") or "")
    threshold = _finite(failure.get("threshold"))
    by = _finite(failure.get("by"))
    words = {"min": "minimum", "max": "maximum", "max_drop": "largest drop", "max_rise": "largest rise"}
    return {
        "slice": str(failure.get("slice")),
        "anchor": anchors.get(str(failure.get("slice"))),
        "metric": metric,
        "value": _metric_text(_finite(failure.get("value")), metric),
        "baseline": _metric_text(_finite(failure.get("baseline_value")), metric),
        "threshold": f"{words.get(bound, bound)} {_number_or_dash(threshold)}",
        "by": NO_VALUE if by is None else _number(by),
    }


def _bounds_text(bounds: dict) -> str:
    marks = {"min": "≥ {}", "max": "≤ {}", "max_drop": "drop ≤ {}", "max_rise": "rise ≤ {}"}
    texts = [
        mark.format(_number(value)) for kind, mark in marks.items() if (value := _finite(bounds.get(kind))) is not None
    ]
    return " · ".join(texts) if texts else NO_VALUE


def _metric_text(value: float | None, metric: str) -> str:
    if value is None:
        return NO_VALUE
    return _integer(value) if metric == "example_count" else f"{value:.4f}"


def _number_or_dash(value: object) -> str:
    number = _finite(value)
    return NO_VALUE if number is None else _number(number)


def _signed(difference: float, metric: str) -> str:
    if round(difference, 4) == 0:
        return "0" if metric == "example_count" else "0.0000"
    if metric == "example_count":
        return f"{round(difference):+,}"
    text = f"{difference:+.4f}"
    return text.replace("-", "\u2212")  # a real minus sign lines up with "+"


def _trend(difference: float | None, metric: str) -> str:
    """Whether the candidate is better or worse than the baseline, for metrics with a direction."""
    if difference is None or round(difference, 4) == 0:
        return ""
    if metric in HIGHER_IS_BETTER:
        return "better" if difference > 0 else "worse"
    if metric == "log_loss":
        return "better" if difference < 0 else "worse"
    return ""


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head>
<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { margin: 0; background: #f6f7f9; color: #222;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 20px 24px 60px; }
header, section.group { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 16px 20px; }
section.group { margin: 14px 0; }
h1 { font-size: 22px; margin: 0 0 8px; display: flex; gap: 12px; align-items: center; }
h2 { font-size: 17px; margin: 28px 0 10px; }
h3 { font-size: 16px; margin: 0 0 6px; }
code, h3 { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: 700;
  font-size: 15px; letter-spacing: .05em; }
.badge.blessed { background: #2e7d32; } .badge.not-blessed { background: #c62828; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 22px; color: #444; }
.meta b { color: #222; }
ul.reasons { margin: 10px 0 0; padding-left: 20px; }
ul.reasons.not-blessed li { color: #8e1c1c; }
a { color: #1a56b0; } .links a { margin-right: 14px; }
table { border-collapse: collapse; background: #fff; border: 1px solid #ddd; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e6e6e6; text-align: left; vertical-align: top; }
th { background: #f0f1f3; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.mark { font-weight: 700; }
.mark.pass { color: #2e7d32; } .mark.fail { color: #c62828; } .mark.none { color: #999; }
.better { color: #2e7d32; } .worse { color: #c62828; }
.muted { color: #777; font-size: 12px; }
table.failures { width: 100%; margin-top: 12px; }
table.failures td { background: #fdecea; }
table.slices { font-size: 12px; }
table.slices td, table.slices th { padding: 2px 7px; }
table.slices td.failed { background: #fdecea; color: #c62828; font-weight: 700; }
table.slices td.base { color: #8a5a1c; }
tr.not-judged td { color: #999; }
.charts { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; }
figcaption { font-weight: 600; margin: 4px 0; }
.legend svg { vertical-align: middle; margin: 0 4px 0 10px; }
svg.chart { background: #fff; border: 1px solid #e2e2e2; border-radius: 4px; font: 11px system-ui, sans-serif; }
svg.chart text { fill: #333; }
svg.chart.flagged { border: 2px solid #c62828; }
svg.chart .axis-title, svg.chart .count { fill: #666; }
svg.chart .threshold-label { fill: #c62828; font-weight: 600; }
svg.chart g.failed .row-label { fill: #c62828; font-weight: 700; }
svg.chart g.not-judged text { fill: #aaa; font-style: italic; }
svg.chart .no-value { fill: #999; }
.chart-note { color: #666; font-size: 12px; margin: 4px 0 0; }
</style></head>
<body><main>
<header>
  <h1><span class="badge {{ 'blessed' if blessed else 'not-blessed' }}">
    {{- 'BLESSED' if blessed else 'NOT BLESSED' }}</span> {{ title }}</h1>
  <div class="meta">
    <span>compared with <b>{{ baseline }}</b>{% if baseline_uri %} <code>{{ baseline_uri }}</code>{% endif %}</span>
    <span><b>{{ overall_examples }}</b> examples</span>
    <span>operating threshold <b>{{ operating_threshold }}</b></span>
    <span><b>{{ judged_count }}</b> slices judged, <b>{{ not_judged_count }}</b> not judged</span>
    {% if thresholds_configured is not none %}<span><b>{{ thresholds_configured }}</b> thresholds configured</span>
    {% endif %}
  </div>
  {% if reasons %}
  <ul class="reasons {{ 'blessed' if blessed else 'not-blessed' }}">
    {% for reason in reasons %}<li>{{ reason }}</li>
    {% endfor %}
  </ul>
  {% endif %}
  {% if failures %}
  <table class="failures">
    <thead><tr><th>slice</th><th>metric</th><th class="num">candidate</th><th class="num">baseline</th>
      <th>threshold</th><th class="num">off by</th></tr></thead>
    <tbody>
    {% for failure in failures %}
      <tr class="failure"><td>{% if failure.anchor %}<a href="#{{ failure.anchor }}">{{ failure.slice }}</a>
        {%- else %}{{ failure.slice }}{% endif %}</td><td>{{ failure.metric }}</td>
        <td class="num">{{ failure.value }}</td><td class="num">{{ failure.baseline }}</td>
        <td>{{ failure.threshold }}</td><td class="num">{{ failure.by }}</td></tr>
    {% endfor %}
    </tbody>
  </table>
  {% endif %}
  {% if links %}
  <p class="links">{% for name, href in links %}<a href="{{ href }}">{{ name }}</a>{% endfor %}</p>
  {% endif %}
</header>

<h2 id="overall">Overall</h2>
{% if overall %}
<table class="overall">
  <thead><tr><th>metric</th><th class="num">candidate</th>{% if with_baseline %}<th class="num">baseline</th>
    <th class="num">difference</th>{% endif %}<th>threshold</th><th>result</th></tr></thead>
  <tbody>
  {% for row in overall %}
    <tr class="metric-{{ row.metric }}"><td>{{ row.metric }}</td><td class="num">{{ row.candidate }}</td>
      {% if with_baseline %}<td class="num">{{ row.baseline }}</td>
      <td class="num {{ row.trend }}">{{ row.difference }}</td>{% endif %}
      <td>{{ row.thresholds }}{% if row.unchecked_change %} <span class="muted">(change not checked: no baseline)</span>
        {%- endif %}</td>
      <td><span class="mark {{ row.result }}">{{ row.mark }}</span></td>
    </tr>
  {% endfor %}
  </tbody>
</table>
{% else %}
<p>No overall slice in the metrics.</p>
{% endif %}

<h2>Slices</h2>
<p class="legend">
  <svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="{{ colors.candidate }}"/></svg>candidate
  {% if with_baseline %}<svg width="12" height="12"><circle cx="6" cy="6" r="4.5" fill="#fff"
    stroke="{{ colors.baseline }}" stroke-width="1.5"/></svg>baseline
  <svg width="6" height="14"><line x1="3" y1="0" x2="3" y2="14" stroke="{{ colors.fail }}" stroke-width="1.5"/></svg>
  largest change allowed{% endif %}
  <svg width="8" height="14"><line x1="4" y1="0" x2="4" y2="14" stroke="{{ colors.fail }}" stroke-width="1.5"
    stroke-dasharray="5 3"/></svg>threshold
  <svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="{{ colors.fail }}"/></svg>failed
  <span class="muted">· grey: too small to judge · \u2013 : no value</span>
</p>
{% for group in groups %}
<section class="group" id="{{ group.anchor }}">
  <h3>{{ group.title }}</h3>
  <p class="muted">{{ group.count }} slice{{ '' if group.count == 1 else 's' }} ·
    {% if group.bounds %}thresholds: {% for metric, text in group.bounds %}{{ metric }} {{ text }}
    {{- '; ' if not loop.last }}{% endfor %}{% else %}no thresholds: shown for information{% endif %}</p>
  <div class="charts">
  {% for chart in group.charts %}
    <figure class="metric-chart" id="{{ chart.anchor }}"><figcaption>{{ chart.metric }}</figcaption>{{ chart.svg }}
      {% if chart.left_out %}<p class="chart-note">{{ chart.left_out }} smaller slice{{ '' if chart.left_out == 1
        else 's' }} not shown; every slice is in the table below.</p>{% endif %}</figure>
  {% endfor %}
  </div>
</section>
{% endfor %}

<h2>All slices</h2>
<table class="slices">
  <thead>
    <tr><th rowspan="{{ 2 if with_baseline else 1 }}">slice</th>
      <th class="num" rowspan="{{ 2 if with_baseline else 1 }}">examples</th>
      {% for metric in metrics %}<th class="num" colspan="{{ 2 if with_baseline else 1 }}">{{ metric }}</th>{% endfor %}
    </tr>
    {% if with_baseline %}
    <tr>{% for metric in metrics %}<th class="num">cand.</th><th class="num">base</th>{% endfor %}</tr>
    {% endif %}
  </thead>
  <tbody>
  {% for row in table %}
    <tr{% if not row.judged %} class="not-judged"{% endif %}><td>{{ row.name }}</td>
      <td class="num">{{ row.examples }}</td>
      {% for cell in row.cells %}<td class="num{{ ' failed' if cell.failed }}">{{ cell.candidate }}</td>
      {%- if cell.baseline is not none %}<td class="num base">{{ cell.baseline }}</td>{% endif %}{% endfor %}</tr>
  {% endfor %}
  </tbody>
</table>

<h2>Not judged</h2>
{% if not_judged %}
<table class="not-judged">
  <thead><tr><th>slice</th><th class="num">examples</th><th>why</th></tr></thead>
  <tbody>
  {% for row in not_judged %}
    <tr><td>{{ row.slice }}</td><td class="num">{{ row.examples }}</td><td>{{ row.reason }}</td></tr>
  {% endfor %}
  </tbody>
</table>
{% else %}
<p>Every slice was judged.</p>
{% endif %}
</main></body>
</html>
"""
