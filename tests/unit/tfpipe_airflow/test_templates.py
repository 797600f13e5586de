from __future__ import annotations

import datetime as dt

import pytest

from tfpipe.artifacts import ArtifactLayout
from tfpipe_airflow.templates import artifact_partition, data_span, previous_span, run_output_uri

JAN = dt.datetime(2013, 1, 1, tzinfo=dt.UTC)


def test_a_scheduled_run_is_partitioned_by_its_span():
    assert data_span(JAN) == "2013-01"
    assert artifact_partition({"data_uri": None}, JAN) == "2013-01"


def test_a_run_on_named_data_is_partitioned_by_that_data():
    first = artifact_partition({"data_uri": "/data/new.csv"}, JAN)
    assert first.startswith("adhoc-") and first == artifact_partition({"data_uri": "/data/new.csv"}, None)
    assert first != artifact_partition({"data_uri": "/data/other.csv"}, JAN)


def test_a_run_with_neither_data_nor_interval_is_refused():
    assert data_span(None) == ""
    with pytest.raises(ValueError, match="neither a data_uri param, nor a data interval"):
        artifact_partition({}, None)


def test_output_uri_template_names_partition_run_and_output():
    template = run_output_uri(ArtifactLayout("/art", "chicago_taxi"), "examples")
    assert template.startswith("/art/chicago_taxi/span={{ tfpipe_partition(")
    assert template.endswith("/run={{ run_id | tfpipe_run_key }}/examples")


class _Event:
    def __init__(self, extra: dict) -> None:
        self.extra = extra


def test_a_run_scheduled_by_asset_events_trains_on_the_newest_span_they_name():
    events = {
        "chicago_taxi_span_landed": [_Event({"spans": ["2016-11", "2016-12"]})],
        "chicago_taxi_retraining": [_Event({"reasons": ["fare drifted"], "spans": ["2016-10"]}), _Event({})],
    }
    assert data_span(None, events) == "2016-12"
    assert artifact_partition({}, None, events) == "2016-12"
    # The data interval of a scheduled run wins over events; named data wins over both.
    assert data_span(JAN, events) == "2013-01"
    assert artifact_partition({"data_uri": "/x.csv"}, None, events).startswith("adhoc-")
    with pytest.raises(ValueError, match="nor an asset event naming a span"):
        artifact_partition({}, None, {"chicago_taxi_retraining": [_Event({"reasons": ["drift"]})]})


def test_the_previous_span_of_a_span_or_an_interval():
    assert previous_span("2016-01") == "2015-12" and previous_span("2016-12") == "2016-11"
    assert previous_span(JAN) == "2012-12" and previous_span("") == "" and previous_span(None) == ""
