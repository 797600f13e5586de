"""The evaluation report: one self-contained HTML page from the evaluate stage's metrics and blessing."""

from __future__ import annotations

import copy
import math
import re
from html.parser import HTMLParser

import pytest
from markupsafe import escape

from tfpipe.evaluation.report import MAX_ROWS, PLOT_LEFT, PLOT_RIGHT, _scale, render_evaluation_report
from tfpipe.validation.report import NO_VALUE, _c

THRESHOLDS = {
    "overall": {"auc": {"min": 0.9, "max_drop": 0.01}, "log_loss": {"max": 0.35, "max_rise": 0.02}},
    "per_slice": {"payment_type": {"auc": {"min": 0.75}}, "trip_start_hour": {"auc": {"min": 0.7}}},
}
SCRIPT_VALUE = "<script>alert(1)</script>"
LINKS = {"TFMA output": "tfma/", "MLflow run": "https://mlflow.example.org/runs/7", "bad": "javascript:alert(1)"}


def side(auc, log_loss, examples, mean_label=0.27) -> dict:
    return {
        "auc": auc,
        "precision": 0.8,
        "recall": 0.7,
        "calibration": 1.01,
        "log_loss": log_loss,
        "example_count": examples,
        "mean_label": mean_label,
    }


def entry(features: dict, examples: int, auc, baseline_auc=None, *, judged=True, mean_label=0.27) -> dict:
    name = " & ".join(f"{key}={value}" for key, value in features.items()) if features else "Overall"
    return {
        "slice": name,
        "features": features,
        "examples": examples,
        "judged": judged,
        "candidate": side(auc, 0.3, examples, mean_label),
        "baseline": None if baseline_auc is None else side(baseline_auc, 0.29, examples, mean_label),
    }


def hour_auc(hour: int) -> float:
    return 0.65 if hour == 3 else round(0.8 + 0.005 * hour, 4)


def failure(name, metric, kind, bound, threshold, value, baseline_value, by) -> dict:
    keys = ("slice", "metric", "kind", "bound", "threshold", "value", "baseline_value", "by")
    return dict(zip(keys, (name, metric, kind, bound, threshold, value, baseline_value, by), strict=True))


def evaluation() -> tuple[dict, dict]:
    """A candidate compared with champion version 3: overall log loss and two slices fail."""
    overall = entry({}, 5000, 0.9312, 0.9350)
    overall["candidate"]["log_loss"], overall["baseline"]["log_loss"] = 0.3712, 0.34
    slices = [
        overall,
        entry({"payment_type": "Cash"}, 1800, 0.71, 0.74),
        entry({"payment_type": "Credit Card"}, 2900, 0.95, 0.951),
        # One class only: TFMA's AUC is NaN, the gate does not judge it.
        entry({"payment_type": "No Charge"}, 120, math.nan, math.nan, judged=False, mean_label=0.0),
        entry({"payment_type": "Dispute"}, 3, 0.5, 0.5, judged=False),
        entry({"payment_type": SCRIPT_VALUE}, 60, 0.8, None),
    ]
    slices += [entry({"trip_start_hour": str(hour)}, 100 + 10 * hour, hour_auc(hour), 0.82) for hour in range(24)]
    slices += [
        entry({"payment_type": "Cash", "trip_start_day": str(day)}, 200 + day, 0.7 + 0.01 * day, 0.75)
        for day in range(1, 8)
    ]
    failures = [
        failure("Overall", "log_loss", "value", "max", 0.35, 0.3712, 0.34, 0.0212),
        failure("Overall", "log_loss", "change", "max_rise", 0.02, 0.3712, 0.34, 0.0112),
        failure("payment_type=Cash", "auc", "value", "min", 0.75, 0.71, 0.74, 0.04),
        failure("trip_start_hour=3", "auc", "value", "min", 0.7, 0.65, 0.82, 0.05),
    ]
    blessing = {
        "decision": "NOT_BLESSED",
        "blessed": False,
        "reasons": [
            "log_loss 0.3712 on Overall is above the maximum 0.35 (by 0.0212)",
            "log_loss on Overall: 0.3712 is 0.0312 above the champion's 0.3400, more than the allowed max rise "
            "of 0.0200 (by 0.0112)",
            "auc 0.7100 on payment_type=Cash is below the minimum 0.75 (by 0.0400)",
            "auc 0.6500 on trip_start_hour=3 is below the minimum 0.7 (by 0.0500)",
        ],
        "failures": failures,
        "not_judged": [
            {
                "slice": "payment_type=No Charge",
                "examples": 120,
                "reason": "one class only (mean label 0): AUC is undefined, not judged",
            },
            {
                "slice": "payment_type=Dispute",
                "examples": 3,
                "reason": "3 examples, fewer than min_slice_size (50): reported, not judged",
            },
        ],
        "baseline": {
            "state": "champion",
            "version": "3",
            "model_uri": "models:/chicago_taxi_big_tipper/3",
            "reason": "",
        },
        "thresholds_configured": 4,
    }
    return {"operating_threshold": 0.5, "slices": slices}, blessing


def first_model() -> tuple[dict, dict]:
    """The first model ever: no baseline anywhere, every threshold met."""
    metrics, _ = evaluation()
    metrics = copy.deepcopy(metrics)
    for item in metrics["slices"]:
        item["baseline"] = None
    blessing = {
        "decision": "BLESSED",
        "blessed": True,
        "reasons": [],
        "failures": [],
        "not_judged": [],
        "baseline": {"state": "first_model", "version": None, "model_uri": None, "reason": "no champion yet"},
        "thresholds_configured": 4,
    }
    return metrics, blessing


def render(tmp_path, metrics, blessing, name="evaluation.html", links=None) -> str:
    path = tmp_path / name
    render_evaluation_report(
        path,
        title="chicago_taxi_big_tipper run 12",
        metrics=metrics,
        blessing=blessing,
        thresholds=THRESHOLDS,
        links=links,
    )
    return path.read_bytes().decode("utf-8")


def figure(html: str, anchor: str) -> str:
    found = re.search(rf'<figure class="metric-chart" id="{anchor}">(.*?)</figure>', html, re.S)
    assert found, f"no chart {anchor}"
    return found.group(1)


def rows(svg: str) -> dict[str, str]:
    """Each row of a dot plot, by its full slice name (the label's tooltip), to its <g> element."""
    found = re.findall(r'(<g class="row[^"]*"><text[^>]*><title>([^<]*)</title>.*?</g>)', svg, re.S)
    return {name: element for element, name in found}


@pytest.fixture
def html(tmp_path) -> str:
    metrics, blessing = evaluation()
    return render(tmp_path, metrics, blessing, links=LINKS)


def test_headline_shows_decision_baseline_and_every_reason(html):
    _, blessing = evaluation()
    assert '<span class="badge not-blessed">NOT BLESSED</span>' in html
    assert "compared with <b>champion version 3</b>" in html
    for reason in blessing["reasons"]:
        assert f"<li>{escape(reason)}</li>" in html
    failures = re.findall(r'<tr class="failure">(.*?)</tr>', html, re.S)
    assert len(failures) == 4
    cash = next(row for row in failures if "payment_type=Cash" in row)
    assert 'href="#g-payment_type"' in cash
    assert ">0.7100<" in cash and ">0.7400<" in cash and "minimum 0.75" in cash and ">0.04<" in cash
    rise = next(row for row in failures if "largest rise" in row)
    assert 'href="#overall"' in rise and "largest rise 0.02" in rise and ">0.0112<" in rise


def test_overall_table_compares_with_baseline_and_marks_results(html):
    table = html[html.index('<table class="overall">') : html.index("</table>", html.index('<table class="overall">'))]
    auc = re.search(r'<tr class="metric-auc">(.*?)</tr>', table, re.S).group(1)
    assert ">0.9312<" in auc and ">0.9350<" in auc and 'class="num worse">\u22120.0038<' in auc
    assert "≥ 0.9 · drop ≤ 0.01" in auc and '<span class="mark pass">✓ pass</span>' in auc
    log_loss = re.search(r'<tr class="metric-log_loss">(.*?)</tr>', table, re.S).group(1)
    assert 'worse">+0.0312<' in log_loss and "≤ 0.35 · rise ≤ 0.02" in log_loss
    assert '<span class="mark fail">✗ fail</span>' in log_loss
    recall = re.search(r'<tr class="metric-recall">(.*?)</tr>', table, re.S).group(1)
    assert f'<span class="mark none">{NO_VALUE}</span>' in recall  # no threshold: not gated


def test_failing_slice_is_red_in_its_chart(html):
    chart = figure(html, "g-payment_type-auc")
    assert '<svg class="chart flagged"' in chart
    by_name = rows(chart)
    assert by_name["payment_type=Cash"].startswith('<g class="row failed">')
    assert '<circle class="candidate failed"' in by_name["payment_type=Cash"]
    assert by_name["payment_type=Credit Card"].startswith('<g class="row">')
    hours = rows(figure(html, "g-trip_start_hour-auc"))
    assert [name for name, row in hours.items() if 'class="row failed"' in row] == ["trip_start_hour=3"]


def test_threshold_line_sits_at_its_value_on_the_scale(html):
    metrics, _ = evaluation()
    payment = [item for item in metrics["slices"] if list(item["features"]) == ["payment_type"]]
    values = [0.75]
    for item in payment:
        for model in ("candidate", "baseline"):
            if item[model] is not None and math.isfinite(item[model]["auc"]):
                values.append(item[model]["auc"])
    scale = _scale(values)
    x = scale.x(0.75)
    assert PLOT_LEFT < x < PLOT_RIGHT
    # The scale runs from one round tick to another and holds every dot: 0.5 (Dispute) to 0.951.
    assert (scale.low, scale.high, scale.step) == pytest.approx((0.4, 1.0, 0.2))
    assert x == pytest.approx(PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * 0.35 / 0.6)
    chart = figure(html, "g-payment_type-auc")
    assert re.search(rf'<line class="threshold min" x1="{_c(x)}" y1="\d+" x2="{_c(x)}"', chart)
    assert '<line class="threshold max"' not in chart
    assert ">min 0.75</text>" in chart


def test_dots_are_where_their_values_are(html):
    chart = figure(html, "g-trip_start_hour-auc")
    values = [0.7, 0.82] + [hour_auc(hour) for hour in range(24)]
    scale = _scale(values)
    by_name = rows(chart)
    assert list(by_name) == [f"trip_start_hour={hour}" for hour in range(24)]  # hours in their own order
    for hour in (3, 23):
        circle = re.search(r'<circle class="candidate[^"]*" cx="([\d.]+)"', by_name[f"trip_start_hour={hour}"])
        assert circle.group(1) == _c(scale.x(hour_auc(hour)))


def test_baseline_dots_only_where_there_is_a_baseline(tmp_path, html):
    chart = figure(html, "g-payment_type-auc")
    by_name = rows(chart)
    assert by_name["payment_type=Cash"].count('<circle class="baseline"') == 1
    assert (
        '<circle class="baseline"'
        not in by_name[f"payment_type={SCRIPT_VALUE}".replace("<", "&lt;").replace(">", "&gt;")]
    )
    # Cash, Credit Card and Dispute; No Charge's baseline is NaN and the <script> slice has none.
    assert chart.count('<circle class="baseline"') == 3

    metrics, blessing = first_model()
    first = render(tmp_path, metrics, blessing, "first.html")
    assert '<span class="badge blessed">BLESSED</span>' in first
    assert "first model: judged on value thresholds alone" in first
    assert '<circle class="baseline"' not in first and ">base</th>" not in first
    assert "(change not checked: no baseline)" in first
    assert 'class="chart flagged"' not in first and '<g class="row failed">' not in first


def test_missing_values_are_a_dash_and_not_plotted(html):
    no_charge = rows(figure(html, "g-payment_type-auc"))["payment_type=No Charge"]
    assert '<text x="206" y="' in no_charge and f'class="no-value">{NO_VALUE}</text>' in no_charge
    assert "<circle" not in no_charge
    table = html[html.index('<table class="slices">') :]
    row = re.search(r"<tr[^>]*><td>payment_type=No Charge</td>(.*?)</tr>", table, re.S).group(1)
    assert f'<td class="num">{NO_VALUE}</td><td class="num base">{NO_VALUE}</td>' in row  # auc, candidate and baseline
    assert re.search(r">\s*nan\s*<", html, re.I) is None


def test_slices_not_judged_are_grey_and_listed(html):
    dispute = rows(figure(html, "g-payment_type-auc"))["payment_type=Dispute"]
    assert dispute.startswith('<g class="row not-judged">')
    assert 'fill="#b0b0b0"' in dispute and ">3 not judged</text>" in dispute
    assert '<tr class="not-judged"><td>payment_type=Dispute</td>' in html
    listed = html[html.index('<table class="not-judged">') :]
    assert '<td>payment_type=Dispute</td><td class="num">3</td>' in listed
    assert "fewer than min_slice_size (50): reported, not judged" in listed
    assert "one class only (mean label 0)" in listed
    assert "<b>34</b> slices judged, <b>2</b> not judged" in html


def test_slice_values_are_escaped(html):
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html


def test_cross_is_its_own_group(html):
    assert '<section class="group" id="g-payment_type-trip_start_day">' in html
    assert "<h3>payment_type \u00d7 trip_start_day</h3>" in html
    cross = rows(figure(html, "g-payment_type-trip_start_day-auc"))
    assert len(cross) == 7
    assert '<svg class="chart"' in figure(html, "g-payment_type-trip_start_day-auc")  # no threshold, none failed


def test_many_slices_show_the_largest_and_say_how_many_are_left_out(tmp_path):
    metrics, blessing = evaluation()
    companies = [entry({"company": f"Company {index:02d}"}, 1000 - index * 10, 0.9, None) for index in range(40)]
    metrics["slices"] += companies
    blessing["failures"].append({"slice": "company=Company 39", "metric": "auc", "kind": "value", "bound": "min"})
    html = render(tmp_path, metrics, blessing)
    chart = figure(html, "g-company-auc")
    shown = rows(chart)
    assert len(shown) == MAX_ROWS
    # The largest 29 and the failing one, smallest of all.
    assert "company=Company 39" in shown and "company=Company 28" in shown and "company=Company 29" not in shown
    assert "10 smaller slices not shown; every slice is in the table below." in chart
    assert html.count("<td>company=Company") == 40


def test_same_input_gives_same_bytes(tmp_path):
    metrics, blessing = evaluation()
    render(tmp_path, metrics, blessing, "one.html", links=LINKS)
    render(tmp_path, *evaluation(), "two.html", links=LINKS)
    assert (tmp_path / "one.html").read_bytes() == (tmp_path / "two.html").read_bytes()


class References(HTMLParser):
    """Every tag and every src/href on the page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.references: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.references += [value or "" for name, value in attrs if name in ("src", "href")]


def test_page_is_self_contained(html):
    parser = References()
    parser.feed(html)
    parser.close()
    assert "script" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags
    external = [reference for reference in parser.references if not reference.startswith("#")]
    assert external == ["tfma/", "https://mlflow.example.org/runs/7"]  # the given links, less the javascript: one
    assert "javascript:" not in html
    without_links = html.replace('href="https://mlflow.example.org/runs/7"', "")
    assert "http://" not in without_links and "https://" not in without_links
    assert "url(" not in html and "@import" not in html
