"""The validation report: one self-contained HTML page, built from real TFDV statistics of taxi trips."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import statistics_pb2

from tests.conftest import SAMPLE_CSV
from tfpipe.validation.findings import Finding
from tfpipe.validation.report import render_validation_report

FINDINGS = [
    Finding("drift", "jensen_shannon", "fare", "error", "fare drifted: 0.31 > 0.1", {"value": 0.31}),
    Finding("schema", "unexpected_value", "payment_type", "warning", 'new values "Pcard" & <Prcard>'),
]
LINKS = {"Great Expectations Data Docs": "../expectations/data_docs/index.html", "statistics": "statistics.tfrecord"}


@pytest.fixture(scope="module")
def trips() -> pd.DataFrame:
    return pd.read_csv(SAMPLE_CSV)


def month(trips: pd.DataFrame, number: int) -> pd.DataFrame:
    # A default index keeps pandas' index out of the statistics as an extra feature.
    return trips[trips["trip_start_month"] == number].reset_index(drop=True)


@pytest.fixture(scope="module")
def may(trips) -> statistics_pb2.DatasetFeatureStatisticsList:
    return tfdv.generate_statistics_from_dataframe(month(trips, 5))


@pytest.fixture(scope="module")
def april(trips) -> statistics_pb2.DatasetFeatureStatisticsList:
    return tfdv.generate_statistics_from_dataframe(month(trips, 4))


def render(tmp_path, statistics, name="report.html", **kwargs) -> str:
    path = tmp_path / name
    kwargs.setdefault("findings", FINDINGS)
    render_validation_report(path, title="chicago_taxi span 5", statistics=statistics, **kwargs)
    assert path.exists()
    return path.read_bytes().decode("utf-8")


def sections(html: str) -> dict[str, str]:
    """Each feature's section, by its anchor id."""
    found = re.findall(r'<section class="feature[^"]*" id="([^"]+)">(.*?)</section>', html, re.S)
    return dict(found)


def feature_names(statistics) -> list[str]:
    return [feature.path.step[0] for feature in statistics.datasets[0].features]


def test_report_with_baseline_shows_every_feature_findings_and_legend(tmp_path, may, april):
    html = render(tmp_path, may, baseline=april, baseline_name="span 4", links=LINKS)

    names = feature_names(may)
    assert len(names) == 19
    for name in names:
        assert f"<h3>{name}</h3>" in html
    assert '<span class="badge fail">FAIL</span>' in html
    assert "<b>1</b> error</span>" in html and "<b>1</b> warning</span>" in html
    assert f"<b>{may.datasets[0].num_examples:,}</b> rows in this span" in html

    table = html[html.index('<table class="findings">') : html.index("</table>")]
    assert re.search(r'<tr class="error">.*?href="#f-fare".*?drift / jensen_shannon.*?</tr>', table, re.S)
    assert re.search(r'<tr class="warning">.*?href="#f-payment_type".*?schema / unexpected_value', table, re.S)
    assert "new values &#34;Pcard&#34; &amp; &lt;Prcard&gt;" in table

    by_id = sections(html)
    assert list(by_id)[:2] == ["f-fare", "f-payment_type"]  # features with findings first
    assert '<div class="box error">' in by_id["f-fare"] and 'class="chart flagged"' in by_id["f-fare"]
    assert '<div class="box warning">' in by_id["f-payment_type"]
    assert "flagged" not in by_id["f-trip_miles"]
    for anchor, section in by_id.items():
        if anchor == "f-pickup_census_tract":  # empty in every row of the sample: nothing to draw
            assert "<svg" not in section and "no values to plot" in section
        else:
            assert section.count("<svg") == 1
            assert section.count("<rect") >= 2
            assert '<g class="legend">' in section and ">span 4</text>" in section
    assert "% of values</text>" in by_id["f-fare"]  # the histogram's y axis is labelled
    assert ">Cash</text>" in by_id["f-payment_type"]

    for name, href in LINKS.items():
        assert f'<a href="{href}">{name}</a>' in html


def test_report_without_baseline_has_no_legend_and_passes_on_warnings(tmp_path, may):
    warnings_only = [f for f in FINDINGS if f.severity == "warning"]
    html = render(tmp_path, may, findings=warnings_only)

    assert '<span class="badge pass">PASS</span>' in html
    assert "<b>0</b> errors</span>" in html
    assert 'class="legend"' not in html and "previous span" not in html
    assert html.count("<svg") == 18


def test_missing_share_is_computed_for_numbers_and_strings(tmp_path, trips, may):
    html = render(tmp_path, may, findings=[])
    frame = month(trips, 5)
    by_id = sections(html)
    for column in ("company", "dropoff_census_tract", "pickup_census_tract"):  # string, float, all missing
        share = frame[column].isna().mean()
        missing = f"{share * 100:.1f}% ({frame[column].isna().sum():,})"
        assert f'<tr><td>missing</td><td class="num">{missing}</td></tr>' in by_id[f"f-{column}"]
    assert "<p>No findings.</p>" in html


def test_data_values_are_escaped(tmp_path, trips):
    frame = month(trips, 5).head(200).copy()
    frame.loc[:50, "payment_type"] = "<script>alert(1)</script>"
    frame.loc[51:60, "payment_type"] = 'Tom & "Jerry\'s"'
    frame['odd <name> & "quotes"'] = frame["fare"]
    statistics = tfdv.generate_statistics_from_dataframe(frame)
    findings = [Finding("schema", "x", 'odd <name> & "quotes"', "error", "<img src=x onerror=alert(1)>")]
    html = render(tmp_path, statistics, findings=findings)

    assert "<script" not in html and "<img" not in html and "<name>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Tom &amp; &#34;Jerry&#39;s&#34;" in html
    assert "<h3>odd &lt;name&gt; &amp; &#34;quotes&#34;</h3>" in html
    assert 'href="#f-odd-name-quotes"' in html


def test_same_input_gives_same_bytes(tmp_path, may, april):
    first = render(tmp_path, may, "one.html", baseline=april, links=LINKS)
    second = render(tmp_path, may, "two.html", baseline=april, links=LINKS)
    assert (tmp_path / "one.html").read_bytes() == (tmp_path / "two.html").read_bytes()
    assert first == second


def test_report_is_self_contained_and_well_formed(tmp_path, may, april):
    html = render(tmp_path, may, baseline=april, links=LINKS)

    assert len(html.encode("utf-8")) < 300_000
    without_links = html
    for href in LINKS.values():
        without_links = without_links.replace(f'href="{href}"', "")
    assert "http://" not in without_links and "https://" not in without_links
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    checker = BalanceChecker()
    checker.feed(html)
    checker.close()
    assert checker.problems == [] and checker.open == []


def test_features_on_one_side_only_are_noted(tmp_path, trips):
    current = month(trips, 5).drop(columns=["tips"]).assign(surcharge=1.5)
    statistics = tfdv.generate_statistics_from_dataframe(current)
    baseline = tfdv.generate_statistics_from_dataframe(month(trips, 4))
    html = render(tmp_path, statistics, baseline=baseline, baseline_name="span 4", findings=[])

    by_id = sections(html)
    assert "Only in span 4: this span has no such feature." in by_id["f-tips"]
    assert "<svg" in by_id["f-tips"]  # the baseline's distribution is still drawn
    assert "Not in span 4: new in this span." in by_id["f-surcharge"]


def test_quantiles_histogram_is_the_fallback(tmp_path, may):
    statistics = statistics_pb2.DatasetFeatureStatisticsList()
    statistics.CopyFrom(may)
    for feature in statistics.datasets[0].features:
        if feature.path.step[0] == "trip_miles":
            quantiles = [h for h in feature.num_stats.histograms if h.type == statistics_pb2.Histogram.QUANTILES]
            del feature.num_stats.histograms[:]
            feature.num_stats.histograms.extend(quantiles)
    html = render(tmp_path, statistics, findings=[])

    section = sections(html)["f-trip_miles"]
    assert "<svg" in section and "buckets estimated from quantiles" in section


VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}
SVG_SELF_CLOSING_OK = {"rect", "line"}


class BalanceChecker(HTMLParser):
    """html.parser never raises, so check that every element that opens also closes, in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID and tag not in SVG_SELF_CLOSING_OK:
            self.problems.append(f"self-closed <{tag}/>")

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()
