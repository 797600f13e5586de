"""Statistics: TFDV statistics of the run's examples, as a binary proto and an HTML page.

Runs TFDV on Apache Beam, so data larger than memory streams through it; the runner and its options
come from `--beam-pipeline-args` (DirectRunner here, DataflowRunner in production) without a code
change.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from typing import Any

from tfpipe import artifacts
from tfpipe.data.landing import DATA_FILE

log = logging.getLogger(__name__)
STATISTICS_FILE = "statistics.tfrecord"
HTML_FILE = "statistics.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples-uri", required=True, help="examples folder written by ingest")
    parser.add_argument("--output-uri", required=True, help="statistics folder of this run")
    parser.add_argument("--beam-pipeline-args", default="", help="Beam options, e.g. '--runner=DirectRunner'")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_data_validation.utils.display_util import get_statistics_html

    data = artifacts.join(args.examples_uri, DATA_FILE)
    options = PipelineOptions(shlex.split(args.beam_pipeline_args) or ["--runner=DirectRunner"])
    with artifacts.staged_output(args.output_uri) as staging:
        statistics = tfdv.generate_statistics_from_csv(
            data_location=data,
            output_path=str(staging / STATISTICS_FILE),
            pipeline_options=options,
        )
        (staging / HTML_FILE).write_text(get_statistics_html(statistics, lhs_name="examples"), encoding="utf-8")
    dataset = statistics.datasets[0]
    log.info("statistics of %d examples, %d features", dataset.num_examples, len(dataset.features))
    return {
        "statistics_uri": artifacts.join(args.output_uri, STATISTICS_FILE),
        "report_uri": artifacts.join(args.output_uri, HTML_FILE),
        "num_examples": dataset.num_examples,
        "num_features": len(dataset.features),
    }
