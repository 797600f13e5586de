"""TFDV statistics through Beam's DirectRunner, on real trips."""

from __future__ import annotations

import argparse

import tensorflow_data_validation as tfdv

from tests.conftest import write_sample_rows
from tfpipe.stages import ingest, statistics


def test_statistics_of_ingested_trips(tmp_path):
    source = write_sample_rows(tmp_path / "in.csv", 200)
    ingest.run(
        argparse.Namespace(output_uri=str(tmp_path / "examples"), landing_uri=None, span=None, data_uri=str(source))
    )
    result = statistics.run(
        argparse.Namespace(
            examples_uri=str(tmp_path / "examples"), output_uri=str(tmp_path / "stats"), beam_pipeline_args=""
        )
    )
    assert result["num_examples"] == 200 and result["num_features"] == 19
    stats = tfdv.load_statistics(result["statistics_uri"])
    features = {f.path.step[0]: f for f in stats.datasets[0].features}
    assert features["fare"].num_stats.common_stats.num_non_missing == 200
    # pickup_census_tract is empty in every row of the sample.
    assert features["pickup_census_tract"].num_stats.common_stats.num_non_missing == 0 or (
        features["pickup_census_tract"].string_stats.common_stats.num_non_missing == 0
    )
    assert "facets-overview" in (tmp_path / "stats" / "statistics.html").read_text()
