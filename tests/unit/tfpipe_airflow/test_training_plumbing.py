"""The Airflow side of training: the TensorBoard link, the pool the configs name, the history gate."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import PROJECT_ROOT
from tfpipe_airflow import pools
from tfpipe_airflow.links import tensorboard
from tfpipe_airflow.links.tensorboard import TensorBoardLink, tensorboard_url
from tfpipe_airflow.operators.gates import training_window_is_complete

RUN_LOGS = "/srv/artifacts/chicago_taxi/span=2016-12/run=manual__2017_01_01/tensorboard"  # pragma: allowlist secret


def _run_filter(url: str) -> str:
    return parse_qs(urlsplit(url).query)["runFilter"][0]


def test_the_link_filters_tensorboard_to_the_runs_logs():
    url = tensorboard_url("http://tb.example:6006/", RUN_LOGS, "/srv/artifacts")
    assert url.startswith("http://tb.example:6006/?runFilter=") and url.endswith("#timeseries")
    assert _run_filter(url) == r"^chicago_taxi/span=2016\-12/run=manual__2017_01_01/tensorboard/"


def test_the_link_works_for_a_gcs_artifact_root():
    url = tensorboard_url(
        "https://tb", "gs://bucket/tfpipe/chicago_taxi/span=2016-12/run=r/tensorboard", "gs://bucket/tfpipe"
    )
    assert _run_filter(url) == r"^chicago_taxi/span=2016\-12/run=r/tensorboard/"


@pytest.mark.parametrize(
    ("logs", "root"),
    [("/elsewhere/tensorboard", "/srv/artifacts"), ("gs://other/x", "gs://bucket/tfpipe"), (RUN_LOGS, None)],
)
def test_logs_outside_the_artifact_root_get_no_link(logs, root):
    assert tensorboard_url("http://tb", logs, root) == ""


def test_the_link_reads_the_tasks_rendered_arguments():
    operator = SimpleNamespace(
        tensorboard_url="http://tb:6006", arguments={"tensorboard_uri": RUN_LOGS}, extra_arguments={}
    )
    with mock.patch.object(tensorboard, "artifact_root", return_value="/srv/artifacts"):
        assert "runFilter=" in TensorBoardLink().get_link(operator, ti_key=mock.sentinel.key)
        unrendered = SimpleNamespace(tensorboard_url="http://tb", arguments={"tensorboard_uri": "{{ x }}"})
        assert TensorBoardLink().get_link(unrendered, ti_key=mock.sentinel.key) == ""
        no_logs = SimpleNamespace(tensorboard_url="http://tb", arguments={"output_uri": "/x"})
        assert TensorBoardLink().get_link(no_logs, ti_key=mock.sentinel.key) == ""


def test_the_pool_of_the_training_config_is_what_airflow_imports(tmp_path, capsys):
    assert pools.main([str(PROJECT_ROOT / "dags" / "configs")]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["tfpipe_training"] == {
        "slots": 2,
        "description": "tfpipe training: tuning trials and distributed training workers",
        "include_deferred": False,
    }


def test_a_broken_config_stops_the_pool_import_with_its_key_named(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("pipeline: x\n")
    assert pools.main([str(tmp_path)]) == 1
    assert "bad.yaml" in capsys.readouterr().err


def test_the_history_gate_passes_a_trainable_window_and_logs_why_not(caplog):
    assert training_window_is_complete(True, "") is True
    with caplog.at_level(logging.WARNING):
        assert training_window_is_complete(False, "not enough history to train at span 2013-02") is False
    assert "training is skipped for this run: not enough history to train at span 2013-02" in caplog.text


def test_an_approval_response_becomes_the_lineage_record():
    import datetime as dt

    from tfpipe_airflow.templates import approval_record

    response = {
        "chosen_options": ["Approve"],
        "params_input": {},
        "responded_at": dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC),
        "responded_by_user": {"id": "7", "name": "on-call"},
    }
    assert json.loads(approval_record(response)) == {
        "mode": "required",
        "decision": "Approve",
        "approver": "on-call",
        "approver_id": "7",
        "approved_at": "2026-11-23 09:30:00+00:00",
    }
    assert json.loads(approval_record(None)) == {"mode": "required", "decision": "none"}


def test_a_candidate_that_is_not_blessed_stops_the_run_with_its_reasons_logged(caplog):
    from tfpipe_airflow.operators.gates import candidate_is_blessed

    assert candidate_is_blessed(True, []) is True
    with caplog.at_level(logging.WARNING):
        assert (
            candidate_is_blessed(False, ["auc 0.71 on Overall is below the minimum 0.9 (by 0.19)"], "/r.html") is False
        )
    assert "NOT BLESSED" in caplog.text and "auc 0.71 on Overall" in caplog.text and "/r.html" in caplog.text
