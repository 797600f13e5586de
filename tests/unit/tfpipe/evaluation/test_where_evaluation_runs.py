"""Where TFMA runs: Beam's local worker processes for large inputs, the calling process for small ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CONFIG_PATH
from tfpipe.config import EvaluationConfig, load_pipeline_config
from tfpipe.evaluation.tfma_eval import beam_pipeline_args, has_rows

WORKERS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def csv(tmp_path: Path, rows: int, last_line_end: bool = True) -> str:
    path = tmp_path / f"{rows}.csv"
    text = "a,b\n" + "".join(f"{i},x\n" for i in range(rows))
    path.write_text(text if last_line_end else text.rstrip("\n"))
    return str(path)


def config(**changes) -> EvaluationConfig:
    return EvaluationConfig.model_validate({**load_pipeline_config(CONFIG_PATH).evaluation.model_dump(), **changes})


@pytest.mark.parametrize("last_line_end", [True, False])
def test_rows_are_counted_without_the_header(tmp_path, last_line_end):
    path = csv(tmp_path, 5, last_line_end)
    assert has_rows(path, 5) and not has_rows(path, 6)


def test_counting_stops_once_it_knows(tmp_path):
    path = csv(tmp_path, 300_000)  # several 1 MiB reads
    assert has_rows(path, 10) and has_rows(path, 300_000) and not has_rows(path, 300_001)


def test_a_small_input_stays_in_this_process(tmp_path):
    args = beam_pipeline_args(config(beam_pipeline_args=[*WORKERS, "--pickle_library=cloudpickle"]), csv(tmp_path, 99))
    assert args == ["--runner=DirectRunner", "--pickle_library=cloudpickle"]


def test_a_large_input_gets_the_configured_workers(tmp_path):
    shipped = config(in_process_below_rows=100)
    assert shipped.beam_pipeline_args == WORKERS
    assert beam_pipeline_args(shipped, csv(tmp_path, 100)) == WORKERS
    assert beam_pipeline_args(config(in_process_below_rows=0), csv(tmp_path, 1)) == WORKERS


def test_other_runners_are_left_alone(tmp_path):
    dataflow = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"]
    assert beam_pipeline_args(config(beam_pipeline_args=dataflow), csv(tmp_path, 1)) == dataflow
    one = ["--runner=DirectRunner"]
    assert beam_pipeline_args(config(beam_pipeline_args=one, in_process_below_rows=0), csv(tmp_path, 1)) == one
