"""The big_tipper model on real taxi rows: raw features in, no `tips`, and serving identical to training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import SAMPLE_CSV, write_sample_rows
from tfpipe.training import model as m

SMALL = m.Design(hidden=(8,), dropout=0.0)


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    return write_sample_rows(tmp_path_factory.mktemp("train") / "train.csv", 300)


@pytest.fixture(scope="module")
def trained(train_csv):
    m.keras.utils.set_random_seed(0)
    columns = m.feature_columns(SMALL)
    model = m.build_model(m.analyze(m.make_dataset(train_csv, 128, columns=columns), SMALL), SMALL)
    history = model.fit(m.make_dataset(train_csv, 64, shuffle=True, seed=0, columns=columns), epochs=1, verbose=0)
    return model, history


@pytest.fixture(scope="module")
def serving(trained, tmp_path_factory):
    path = m.export_serving_model(trained[0], tmp_path_factory.mktemp("export") / "model")
    return tf.saved_model.load(path).signatures["serving_default"]


@pytest.fixture(scope="module")
def unseen_rows() -> dict[str, np.ndarray]:
    """Real trips not used in training, plus one with every value missing and one with unseen values."""
    frame = pd.read_csv(SAMPLE_CSV, skiprows=range(1, 1001), nrows=200)
    features = m.features_from_frame(frame, m.feature_columns(SMALL))
    odd = {
        "payment_type": ["", "Bitcoin"],
        "company": ["", "A Company Never Seen"],
        "pickup_community_area": [m.MISSING_INT, 99],
        "dropoff_community_area": [m.MISSING_INT, 1234],
        "dropoff_census_tract": [m.MISSING_INT, 1],
        "pickup_census_tract": [m.MISSING_INT, 1],
        "trip_start_timestamp": [m.MISSING_INT, 4102444800],
        "trip_start_hour": [m.MISSING_INT, 25],
        "trip_start_day": [m.MISSING_INT, 9],
        "trip_start_month": [m.MISSING_INT, 13],
        "trip_seconds": [m.MISSING_INT, 10**9],
        "fare": [m.MISSING_FLOAT, 1e6],
        "trip_miles": [m.MISSING_FLOAT, -3.0],
        "pickup_latitude": [m.MISSING_FLOAT, 50.0],
        "pickup_longitude": [m.MISSING_FLOAT, -100.0],
        "dropoff_latitude": [m.MISSING_FLOAT, 0.0],
        "dropoff_longitude": [m.MISSING_FLOAT, 0.0],
    }
    assert set(odd) == set(m.RAW_COLUMNS)
    return {k: np.concatenate([v, np.asarray(odd[k], dtype=v.dtype)]) for k, v in features.items()}


def test_a_tiny_training_run_completes(trained):
    model, history = trained
    assert math.isfinite(history.history["loss"][-1])
    assert set(model.input) == set(SMALL.features)


def test_the_dataset_streams_batches_of_raw_features_without_tips(train_csv):
    batches = list(m.make_dataset(train_csv, 64))
    assert [len(labels) for _, labels in batches] == [64, 64, 64, 64, 44]
    for features, labels in batches:
        assert set(features) == set(m.RAW_COLUMNS)
        assert "tips" not in features and m.LABEL not in features
        assert set(labels.numpy()) <= {0, 1}


def test_a_model_streams_only_its_own_columns_and_never_tips(train_csv):
    features, _ = next(iter(m.make_dataset(train_csv, 8, columns=m.feature_columns(SMALL))))
    assert set(features) == set(SMALL.features)
    with pytest.raises(ValueError, match="tips"):
        m.make_dataset(train_csv, columns=["fare", "tips"])


def test_missing_values_get_the_documented_defaults(train_csv):
    # The sample's first trip has no pickup area, no locations and no census tracts.
    features, _ = next(iter(m.make_dataset(train_csv, 1)))
    assert features["pickup_community_area"].numpy()[0] == m.MISSING_INT
    assert math.isnan(features["pickup_latitude"].numpy()[0])
    assert features["dropoff_census_tract"].numpy()[0] == m.MISSING_INT
    assert features["payment_type"].numpy()[0] == b"Credit Card"


def test_serving_predicts_on_raw_rows_with_missing_and_unseen_values(serving, unseen_rows):
    probabilities = serving(**{k: tf.constant(v) for k, v in unseen_rows.items()})["probabilities"].numpy()
    assert probabilities.shape == (202,)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_serving_signature_equals_in_process_predictions(trained, serving, unseen_rows):
    in_process = trained[0].predict(unseen_rows, verbose=0)[:, 0]
    served = serving(**{k: tf.constant(v) for k, v in unseen_rows.items()})["probabilities"].numpy()
    np.testing.assert_allclose(served, in_process, rtol=0, atol=1e-6)


def test_the_serving_signature_takes_raw_columns_only(serving):
    _, inputs = serving.structured_input_signature
    assert set(inputs) == set(SMALL.features)
    assert "tips" not in inputs and m.LABEL not in inputs
    assert inputs["payment_type"].dtype == tf.string and inputs["fare"].dtype == tf.float32


def test_a_file_without_a_raw_column_is_refused(tmp_path):
    frame = pd.read_csv(SAMPLE_CSV, nrows=5).drop(columns=["company"])
    frame.to_csv(tmp_path / "trips.csv", index=False)
    with pytest.raises(ValueError, match="company"):
        m.make_dataset(tmp_path / "trips.csv")
