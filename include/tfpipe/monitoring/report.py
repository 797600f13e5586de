"""The monitoring report: one HTML page per window with charts a person would rather look at than read.

Alerts first (what crossed which threshold, since when, the runbook section), then trends over the recent
windows (traffic, latency, errors, the share predicted big tippers, prediction drift, AUC once labels
arrive), the prediction distribution against the evaluation set at training time, and every feature's
distribution: this window against the training data and the previous window, and its median and
quartiles over time against the training data's. Like the validation report it is a single file with
inline SVG (no scripts, no CDN), deterministic for the same inputs; its distribution charts are the
validation report's own.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from tfpipe.validation import report as validation_report

WINDOW_COLOR = "#3366cc"
TRAINING_COLOR = "#e8912d"
PREVIOUS_COLOR = "#8c8c8c"
THRESHOLD_COLOR = "#c62828"
SERIES_COLORS = ("#3366cc", "#2e9e57", "#8e44ad", "#d35400", "#16a085", "#7f8c8d")
TREND_WINDOWS = 48
WIDTH, HEIGHT = 520, 170
LEFT, RIGHT, TOP, BOTTOM = 54, 12, 14, 34


def _c(value: float) -> str:
    return f"{value:.1f}"


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def line_chart(
    title: str,
    x_labels: list[str],
    series: list[tuple[str, str, list[float | None]]],
    *,
    references: list[tuple[str, str, float]] = (),
    bands: list[tuple[str, list[tuple[float, float] | None]]] = (),
    percent: bool = False,
    flagged: bool = False,
) -> Markup:
    """A small line chart over windows: series, dashed reference lines (thresholds, training values), bands."""
    values = [v for _, _, points in series for v in points if v is not None and math.isfinite(v)]
    values += [v for _, _, v in references if v is not None and math.isfinite(v)]
    values += [edge for _, points in bands for pair in points if pair for edge in pair if math.isfinite(edge)]
    if not values or not x_labels:
        return Markup('<div class="no-chart">no data yet</div>')
    low, high = min(0.0, min(values)), max(values)
    if high <= low:
        high = low + 1.0
    high += (high - low) * 0.08
    n = len(x_labels)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(index: int) -> float:
        return LEFT + (plot_w * (index + 0.5) / n)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - (value - low) / (high - low))

    parts = [
        f'<svg class="chart{" flagged" if flagged else ""}" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img"><title>{escape(title)}</title>'
    ]
    for step in range(5):
        value = low + (high - low) * step / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_c(y(value))}" y2="{_c(y(value))}" '
            f'stroke="{validation_report.GRID_COLOR}"/>'
            f'<text x="{LEFT - 4}" y="{_c(y(value) + 3)}" text-anchor="end">'
            f"{escape(_fmt(100 * value) + '%' if percent else _fmt(value))}</text>"
        )
    ticks = sorted({0, n - 1, *range(0, n, max(1, n // 4))})
    for index in ticks:
        parts.append(
            f'<text x="{_c(x(index))}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">{escape(x_labels[index])}</text>'
        )
    for color, points in bands:
        upper = [(x(i), y(p[1])) for i, p in enumerate(points) if p]
        lower = [(x(i), y(p[0])) for i, p in enumerate(points) if p]
        if len(upper) > 1:
            outline = " ".join(f"{_c(a)},{_c(b)}" for a, b in upper + lower[::-1])
            parts.append(f'<polygon points="{outline}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
    for label, color, value in references:
        if value is None or not math.isfinite(value):
            continue
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_c(y(value))}" y2="{_c(y(value))}" stroke="{color}" '
            f'stroke-dasharray="5,4"/><text x="{WIDTH - RIGHT - 2}" y="{_c(y(value) - 3)}" text-anchor="end" '
            f'fill="{color}">{escape(label)}</text>'
        )
    for _, color, points in series:
        coordinates = [(x(i), y(v)) for i, v in enumerate(points) if v is not None and math.isfinite(v)]
        if len(coordinates) > 1:
            path = " ".join(f"{_c(a)},{_c(b)}" for a, b in coordinates)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for a, b in coordinates:
            parts.append(f'<circle cx="{_c(a)}" cy="{_c(b)}" r="2.5" fill="{color}"/>')
    return _closed(parts, series)


def _closed(parts: list[str], series: list[tuple[str, str, Any]]) -> Markup:
    """The chart's parts, then a legend of its series along the bottom, closing the SVG."""
    legend_x = LEFT
    for label, color, _ in series:
        parts.append(
            f'<rect x="{legend_x}" y="{HEIGHT - 14}" width="10" height="10" fill="{color}"/>'
            f'<text x="{legend_x + 14}" y="{HEIGHT - 5}">{escape(label)}</text>'
        )
        legend_x += 18 + 7 * len(label)
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(title: str, edges: list[str], series: list[tuple[str, str, list[float]]]) -> Markup:
    """Grouped bars over the same buckets (shares)."""
    top = max((v for _, _, values in series for v in values), default=0.0)
    if top <= 0:
        return Markup('<div class="no-chart">no data</div>')
    n, k = len(edges), len(series)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group = plot_w / n
    parts = [
        f'<svg class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">'
        f"<title>{escape(title)}</title>"
    ]
    for step in range(5):
        value = top * step / 4
        yy = TOP + plot_h * (1 - value / top)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_c(yy)}" y2="{_c(yy)}" '
            f'stroke="{validation_report.GRID_COLOR}"/>'
            f'<text x="{LEFT - 4}" y="{_c(yy + 3)}" text-anchor="end">{100 * value:.0f}%</text>'
        )
    for j, (_, color, values) in enumerate(series):
        for i, value in enumerate(values):
            height = plot_h * value / top
            xx = LEFT + group * i + group * 0.1 + (group * 0.8 / k) * j
            parts.append(
                f'<rect x="{_c(xx)}" y="{_c(TOP + plot_h - height)}" width="{_c(group * 0.8 / k)}" '
                f'height="{_c(height)}" fill="{color}"/>'
            )
    for i in range(0, n + 1, max(1, n // 5)):
        label = edges[i] if i < len(edges) else "1.0"
        parts.append(f'<text x="{_c(LEFT + group * i)}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">{label}</text>')
    return _closed(parts, series)


def _missing(value: Any) -> bool:
    return value is None or isinstance(value, jinja2.Undefined)


def _pct(value: Any) -> str:
    return "\u2013" if _missing(value) else f"{100 * value:.2f}%"


def _num(value: Any) -> str:
    if _missing(value):
        return "\u2013"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _feature_stats(statistics: Any, name: str) -> Any:
    if statistics is None or not statistics.datasets:
        return None
    for feature in statistics.datasets[0].features:
        step = feature.path.step[0] if feature.path.step else feature.name
        if step == name:
            return feature
    return None


def _label(window: dict[str, Any]) -> str:
    start, end = dt.datetime.fromisoformat(window["start"]), dt.datetime.fromisoformat(window["end"])
    return end.strftime("%m-%d %H:%M" if end - start >= dt.timedelta(minutes=1) else "%H:%M:%S")


def _series(summaries: list[dict[str, Any]], version: str, *path: str) -> list[float | None]:
    out = []
    for summary in summaries:
        value: Any = summary.get("versions", {}).get(version)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out.append(float(value) if isinstance(value, int | float) else None)
    return out


def render(path: Path, *, model: str, result: Any, config: Any) -> None:
    """Write the report of one window (`result`: a tfpipe.monitoring.monitor.WindowResult)."""
    summary = result.summary
    summaries = [*result.history[-(TREND_WINDOWS - 1) :], summary]
    labels = [_label(s["window"]) for s in summaries]
    versions = sorted(summary["versions"], key=lambda v: -summary["versions"][v].get("instances_read", 0))
    colors = {version: SERIES_COLORS[i % len(SERIES_COLORS)] for i, version in enumerate(versions)}
    monitoring = config.monitoring
    alerts = [a.to_dict() for a in result.alerts]
    alert_keys = {(a["version"], a["feature"]) for a in alerts}

    def per_version(*keys: str) -> list[tuple[str, str, list[float | None]]]:
        return [(f"v{version}", colors[version], _series(summaries, version, *keys)) for version in versions]

    trends = [
        ("Requests served (estimated)", line_chart("requests", labels, per_version("service", "requests"))),
        (
            "Latency p50 and p99 (ms)",
            line_chart(
                "latency",
                labels,
                [
                    (f"v{v} {q}", colors[v], _series(summaries, v, "service", f"{q}_ms"))
                    for v in versions
                    for q in ("p50", "p99")
                ],
                references=[
                    ("p99 limit", THRESHOLD_COLOR, monitoring.service.max_p99_ms),
                    ("p50 limit", PREVIOUS_COLOR, monitoring.service.max_p50_ms),
                ],
            ),
        ),
        (
            "Error rate (5xx)",
            line_chart(
                "error rate",
                labels,
                per_version("service", "error_rate"),
                references=[("limit", THRESHOLD_COLOR, monitoring.service.max_error_rate)],
                percent=True,
            ),
        ),
        (
            "Share predicted big tippers (quality proxy)",
            line_chart(
                "positive share",
                labels,
                per_version("predictions", "positive_share"),
                references=[
                    (f"v{v} at training", TRAINING_COLOR, summary["versions"][v]["baseline"].get("positive_share"))
                    for v in versions
                ],
                percent=True,
            ),
        ),
        (
            "Prediction drift from the evaluation set (Jensen-Shannon)",
            line_chart(
                "prediction drift",
                labels,
                per_version("prediction_drift"),
                references=[("limit", THRESHOLD_COLOR, monitoring.predictions.max_drift)],
            ),
        ),
    ]
    auc_points: dict[str, dict[str, float]] = {}
    for s in summaries:
        for window_key, per in (s.get("labels") or {}).items():
            for version, item in per.items():
                if item.get("auc") is not None:
                    auc_points.setdefault(version, {})[window_key] = item["auc"]
    if auc_points:
        keys = sorted({k for per in auc_points.values() for k in per})
        trends.append(
            (
                "AUC on labelled trips (by the window they were served in)",
                line_chart(
                    "auc",
                    [dt.datetime.fromisoformat(k.split("/")[1]).strftime("%m-%d %H:%M") for k in keys],
                    [
                        (f"v{v}", colors.get(v, WINDOW_COLOR), [per.get(k) for k in keys])
                        for v, per in auc_points.items()
                    ],
                    references=[
                        (f"v{v} at training", TRAINING_COLOR, result.baselines[v].auc)
                        for v in versions
                        if v in result.baselines and result.baselines[v].auc is not None
                    ],
                ),
            )
        )

    prediction_charts = []
    for version in versions:
        figure = summary["versions"][version]
        current = (figure.get("predictions") or {}).get("histogram")
        baseline = (
            (result.baselines[version].predictions or {}).get("histogram") if version in result.baselines else None
        )
        series = [(f"v{version} this window", WINDOW_COLOR, current)] if current else []
        if baseline:
            series.append(("evaluation set at training", TRAINING_COLOR, baseline))
        if series:
            edges = [f"{i / 20:.1f}" for i in range(20)]
            prediction_charts.append((version, bar_chart(f"predictions v{version}", edges, series)))

    features = []
    main = versions[0] if versions else None
    if main is not None:
        stats = result.statistics.get(main)
        prior = result.previous_statistics.get(main)
        training = result.baselines[main].statistics if main in result.baselines else None
        figure = summary["versions"][main]
        for name in sorted(result.window.features):
            current = _feature_stats(stats, name)
            if current is None:
                continue
            series = [("this window", WINDOW_COLOR, current)]
            if prior is not None and _feature_stats(prior, name) is not None:
                series.append(("previous window", PREVIOUS_COLOR, _feature_stats(prior, name)))
            if training is not None and _feature_stats(training, name) is not None:
                series.append(("training", TRAINING_COLOR, _feature_stats(training, name)))
            flagged = (main, name) in alert_keys
            numeric = current.WhichOneof("stats") == "num_stats"
            chart = (validation_report._numeric_chart if numeric else validation_report._categorical_chart)(
                series, flagged
            )
            over_time = None
            if numeric:
                medians = _series(summaries, main, "numeric", name, "median")
                band = []
                for s in summaries:
                    item = (s.get("versions", {}).get(main, {}).get("numeric") or {}).get(name) or {}
                    band.append((item["p25"], item["p75"]) if "p25" in item and "p75" in item else None)
                training_feature = _feature_stats(training, name)
                reference = training_feature.num_stats.median if training_feature is not None else None
                over_time = line_chart(
                    f"{name} over time",
                    labels,
                    [("median (band: quartiles)", WINDOW_COLOR, medians)],
                    references=[("training median", TRAINING_COLOR, reference)] if reference is not None else [],
                    bands=[(WINDOW_COLOR, band)],
                    flagged=flagged,
                )
            skew_series = _series(summaries, main, "skew", name)
            policy = monitoring.skew.features.get(name)
            skew_chart = None
            if any(v is not None for v in skew_series):
                skew_chart = line_chart(
                    f"skew of {name}",
                    labels,
                    [
                        ("skew from training", WINDOW_COLOR, skew_series),
                        ("drift from previous", PREVIOUS_COLOR, _series(summaries, main, "drift", name)),
                    ],
                    references=[("threshold", THRESHOLD_COLOR, policy.threshold)]
                    if policy and policy.threshold
                    else [],
                    flagged=flagged,
                )
            quality = figure.get("quality", {}).get(name, {})
            features.append(
                {
                    "name": name,
                    "flagged": flagged,
                    "chart": chart,
                    "over_time": over_time,
                    "skew_chart": skew_chart,
                    "skew": figure.get("skew", {}).get(name),
                    "drift": figure.get("drift", {}).get(name),
                    "missing": quality.get("missing_share"),
                    "out_of_domain": quality.get("out_of_domain_share"),
                }
            )
        features.sort(key=lambda f: (not f["flagged"], f["name"]))

    runs = summary["training"]["runs"]
    training_chart = None
    if runs:
        training_chart = line_chart(
            "training time",
            [r["finished"][5:16].replace("T", " ") for r in runs],
            [("train seconds", WINDOW_COLOR, [r["seconds"] for r in runs])],
        )
    environment = jinja2.Environment(
        autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True
    )
    html = environment.from_string(_TEMPLATE).render(
        model=model,
        summary=summary,
        alerts=alerts,
        versions=versions,
        trends=trends,
        prediction_charts=prediction_charts,
        features=features,
        main=main,
        training_chart=training_chart,
        anomalies=result.schema_anomalies,
        window_color=WINDOW_COLOR,
        training_color=TRAINING_COLOR,
        previous_color=PREVIOUS_COLOR,
        pct=_pct,
        num=_num,
    )
    path.write_text(html, encoding="utf-8")


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Monitoring {{ model }} {{ summary.window.start }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
  background: #f6f7f9; }
main { max-width: 1140px; margin: 0 auto; padding: 20px 24px 60px; }
header, section.card { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 14px 18px;
  margin: 12px 0; }
h1 { font-size: 22px; margin: 0 0 8px; display: flex; gap: 12px; align-items: center; }
h2 { font-size: 17px; margin: 26px 0 8px; }
h3 { font-size: 15px; margin: 0 0 6px; font-family: ui-monospace, Menlo, Consolas, monospace; }
.badge { padding: 2px 10px; border-radius: 4px; color: #fff; font-size: 14px; font-weight: 700; }
.ok { background: #2e7d32; } .bad { background: #c62828; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 22px; color: #444; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e6e6e6; vertical-align: top; }
th { background: #f0f1f3; }
tr.critical td { background: #fdecea; } tr.warning td { background: #fff8e1; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
.grid figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
section.feature { background: #fff; border: 1px solid #ddd; border-left: 5px solid #cfd4da; border-radius: 6px;
  padding: 12px 16px; margin: 12px 0; }
section.feature.flagged { border-left-color: #c62828; }
svg.chart { background: #fff; border: 1px solid #e2e2e2; border-radius: 4px; font-size: 11px;
  font-family: system-ui, sans-serif; }
svg.chart.flagged { border: 2px solid #c62828; }
svg.chart .axis-title { fill: #666; } svg.chart .bar-label { fill: #444; font-size: 10px; }
.chart-note { color: #666; font-size: 12px; } .no-chart { color: #777; font-style: italic; padding: 8px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
.muted { color: #666; }
</style></head><body><main>
<header>
  <h1><span class="badge {{ 'bad' if alerts else 'ok' }}">
    {%- if alerts %}{{ alerts|length }} ALERT{{ '' if alerts|length == 1 else 'S' }}{% else %}HEALTHY{% endif -%}
    </span> Monitoring of {{ model }}</h1>
  <div class="meta">
    <span>window <b>{{ summary.window.start }}</b> .. <b>{{ summary.window.end }}</b></span>
    <span>versions: <b>{{ versions|join(', ') or 'none served' }}</b></span>
    <span><b>{{ '%.0f'|format(summary.served) }}</b> predictions served
      {%- if summary.expected %} (expected ~{{ '%.0f'|format(summary.expected) }}){% endif %}</span>
    <span>log: {{ summary.log.lines_read }} lines read, {{ pct(summary.log.sample_ratio) }} of the window's
      {{ '%.1f'|format(summary.log.bytes_in_window / 1e6) }} MB</span>
    <span>server: {% if not summary.probe %}not probed
      {%- elif summary.probe.reachable is false %}<b>not answering</b>
      {%- elif summary.probe.ready is false %}<b>not ready</b>{% else %}ready{% endif %}</span>
  </div>
  <p class="muted"><span class="swatch" style="background: {{ window_color }}"></span>this window
    <span class="swatch" style="background: {{ previous_color }}"></span>previous window
    <span class="swatch" style="background: {{ training_color }}"></span>training data / evaluation set at
    training time</p>
</header>

<h2>Alerts</h2>
{% if alerts %}
<table><thead><tr><th>alert</th><th>what crossed which threshold</th><th>since</th><th>sent</th>
  <th>runbook</th></tr></thead><tbody>
{% for a in alerts %}
<tr class="{{ a.severity }}"><td><b>{{ a.severity|upper }}</b> {{ a.title }}
  {%- if a.version %} v{{ a.version }}{% endif %}{% if a.feature %} <code>{{ a.feature }}</code>{% endif %}</td>
<td>{{ a.sentence }}{% if a.retrain %} <b>Retraining requested.</b>{% endif %}</td><td>{{ a.since }}</td>
<td>{{ 'yes' if a.notify else 'no (cool-down, last ' ~ a.last_notified ~ ')' }}</td>
<td><code>{{ a.runbook }}</code></td></tr>
{% endfor %}</tbody></table>
{% else %}<p>No alert: every judged signal is within its threshold.</p>{% endif %}

<h2>Trends</h2>
<div class="grid">{% for title, chart in trends %}<figure><figcaption>{{ title }}</figcaption>{{ chart }}</figure>
{% endfor %}</div>

<h2>Predictions</h2>
<div class="grid">{% for version, chart in prediction_charts %}
<figure><figcaption>v{{ version }}: predicted probability</figcaption>{{ chart }}</figure>{% endfor %}</div>
<table><thead><tr><th>version</th><th class="num">predictions read</th><th class="num">predicted big tippers</th>
  <th class="num">at training</th><th class="num">prediction drift</th><th class="num">p50 ms</th>
  <th class="num">p99 ms</th><th class="num">error rate</th><th>source</th><th>baseline</th></tr></thead><tbody>
{% for v in versions %}{% set f = summary.versions[v] %}
<tr><td>v{{ v }}</td><td class="num">{{ num((f.predictions or {}).count) }}</td>
<td class="num">{{ pct((f.predictions or {}).positive_share) }}</td>
<td class="num">{{ pct(f.baseline.positive_share) }}</td><td class="num">{{ num(f.prediction_drift) }}</td>
<td class="num">{{ num(f.service.p50_ms) }}</td><td class="num">{{ num(f.service.p99_ms) }}</td>
<td class="num">{{ pct(f.service.error_rate) }}</td><td>{{ f.service.source }}</td>
<td>{{ f.baseline.source }}{% for p in f.baseline.problems %}<br><span class="muted">{{ p }}</span>{% endfor %}</td>
</tr>
{% endfor %}</tbody></table>

<h2>Features{% if main %} (v{{ main }}){% endif %}</h2>
<table><thead><tr><th>feature</th><th class="num">skew</th><th class="num">drift</th><th class="num">missing</th>
  <th class="num">out of domain</th></tr></thead><tbody>
{% for f in features %}<tr{% if f.flagged %} class="critical"{% endif %}>
<td><a href="#f-{{ f.name }}"><code>{{ f.name }}</code></a></td><td class="num">{{ num(f.skew) }}</td>
<td class="num">{{ num(f.drift) }}</td><td class="num">{{ pct(f.missing) }}</td>
<td class="num">{{ pct(f.out_of_domain) }}</td></tr>
{% endfor %}</tbody></table>
{% for f in features %}
<section class="feature{{ ' flagged' if f.flagged }}" id="f-{{ f.name }}"><h3>{{ f.name }}</h3>
<div class="grid">
{% if f.chart %}<figure><figcaption>distribution</figcaption>{{ f.chart }}</figure>{% endif %}
{% if f.over_time %}<figure><figcaption>over time against training</figcaption>{{ f.over_time }}</figure>
{% endif %}
{% if f.skew_chart %}<figure><figcaption>distance from training and from the previous window</figcaption>
{{ f.skew_chart }}</figure>{% endif %}
</div></section>
{% endfor %}

<h2>Training pipeline</h2>
<section class="card">
{% if training_chart %}<figure><figcaption>training time of the final training, per run</figcaption>
{{ training_chart }}</figure>
{% else %}<p class="muted">No training run found under the artifact root.</p>{% endif %}
<p>Failed training runs in all: <b>{{ summary.training.failed_runs if summary.training.failed_runs is not none
  else 'unknown (not probed)' }}</b></p>
{% if summary.training.quota %}
<table><thead><tr><th>quota</th><th class="num">used share</th></tr></thead><tbody>
{% for q in summary.training.quota %}<tr><td>{{ q.scope }} {{ q.subject }} {{ q.resource }}</td>
<td class="num">{{ pct(q.utilization) }}</td></tr>{% endfor %}</tbody></table>
{% else %}<p class="muted">No quota metrics export found.</p>{% endif %}
</section>

<h2>TFDV schema anomalies of the served data (for reference)</h2>
<section class="card">
{% for v, items in anomalies.items() %}{% for item in items %}
<div>v{{ v }} <code>{{ item.feature }}</code>: {{ item.description }}</div>
{% endfor %}{% endfor %}
{% if not anomalies or not (anomalies.values()|select|list) %}<p class="muted">None.</p>{% endif %}
</section>
</main></body></html>
"""
