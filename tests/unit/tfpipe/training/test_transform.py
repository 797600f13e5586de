"""The transform: learned once from the training splits, saved as JSON, built into every model of the run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SAMPLE_CSV
from tfpipe.training import model as m

SMALL = m.Design(hidden=(8,), dropout=0.0)


def test_the_transform_is_learned_from_train_and_validation_only(window):
    transform = json.loads(window.transform.read_text())
    manifest = json.loads((window.splits / "manifest.json").read_text())
    learned = transform["learned_from"]
    assert learned["splits"] == ["train", "validation"]
    assert learned["spans"] == ["2013-01", "2015-12"], "never the evaluation split (2016)"
    assert learned["rows"] == manifest["splits"]["train"]["rows"] + manifest["splits"]["validation"]["rows"]
    assert learned["data_fingerprint"] == manifest["fingerprint"]
    assert len(transform["fingerprint"]) == 64


def test_the_transform_holds_every_constant_the_model_needs(window):
    features = json.loads(window.transform.read_text())["features"]
    assert set(features) == set(m.feature_columns())
    payment = features["payment_type"]["vocabulary"]
    assert payment[:2] == ["Cash", "Credit Card"], "most frequent first"
    assert len(features["company"]["vocabulary"]) <= 63, "max_tokens=64 includes the OOV slot"
    assert len(features["pickup_latitude"]["boundaries"]) == 9, "10 buckets"
    # fare is log-normalized: the mean of log1p(fare) over 2013-2015 trips.
    frame = pd.read_csv(SAMPLE_CSV)
    early = frame[frame["trip_start_timestamp"] < 1451606400]  # before 2016-01-01
    expected = np.log1p(early["fare"].fillna(0).clip(lower=0)).mean()
    assert features["fare"]["mean"][0] == pytest.approx(expected, rel=1e-4)


def test_a_model_built_from_the_saved_json_predicts_exactly_like_one_built_from_the_analysis(window):
    frame = pd.read_csv(SAMPLE_CSV, nrows=300)
    columns = m.feature_columns(SMALL)
    analysis = m.analyze(m.features_from_frame(frame, columns), SMALL)
    reloaded = json.loads(json.dumps(analysis))
    rows = m.features_from_frame(pd.read_csv(SAMPLE_CSV, skiprows=range(1, 1001), nrows=100), columns)
    predictions = []
    for transform in (analysis, reloaded):
        m.keras.utils.set_random_seed(7)
        predictions.append(m.build_model(transform, SMALL).predict(rows, verbose=0))
    np.testing.assert_array_equal(predictions[0], predictions[1])


def test_a_transform_from_another_design_is_refused_with_the_feature_named():
    frame = pd.read_csv(SAMPLE_CSV, nrows=200)
    narrow = m.Design(features={"fare": m.Feature("log")}, crosses=())
    transform = m.analyze(m.features_from_frame(frame, ["fare"]), narrow)
    with pytest.raises(ValueError, match="no constants for feature 'pickup_community_area'"):
        m.build_model(transform, SMALL)
    changed = m.Design(features={"fare": m.Feature("numeric")}, crosses=())
    with pytest.raises(ValueError, match="'fare' was analyzed as 'log', the design says 'numeric'"):
        m.build_model(transform, changed)
