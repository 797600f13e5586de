"""Schema proposals from real taxi spans: a clean span proposes nothing, a new payment type is proposed
for review, and the curated schema is never written.

Runs the real TFDV (statistics on Beam's DirectRunner, `update_schema`) on months of the sample.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SAMPLE_CSV
from tfpipe.data.spans import span_of_timestamp
from tfpipe.errors import StageError
from tfpipe.stages import ERROR_PREFIX, RESULT_PREFIX, STAGES
from tfpipe.stages.propose_schema import curated_comments, run, with_comments

SCHEMA = PROJECT_ROOT / "dags" / "configs" / "chicago_taxi" / "schema.pbtxt"
SPAN = "2013-06"


def _span_csv(path: Path, change=None) -> Path:
    with open(SAMPLE_CSV, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if span_of_timestamp(float(row["trip_start_timestamp"])) == SPAN]
        header = list(reader.fieldnames or [])
    if change:
        change(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _propose(data: Path, output: Path, schema: Path = SCHEMA) -> dict:
    return run(
        argparse.Namespace(
            schema_uri=str(schema),
            data_uri=str(data),
            output_uri=str(output),
            beam_pipeline_args='["--runner=DirectRunner"]',
        )
    )


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture
def untouched_schema():
    before = _fingerprint(SCHEMA)
    yield
    assert _fingerprint(SCHEMA) == before, "the checked-in schema must never be written"


def _load(path: Path):
    import tensorflow_data_validation as tfdv

    return tfdv.load_schema_text(str(path))


def test_a_clean_span_proposes_no_change(tmp_path, caplog, untouched_schema):
    caplog.set_level(logging.INFO)
    output = tmp_path / "proposed.pbtxt"
    result = _propose(_span_csv(tmp_path / "span" / "trips.csv"), output)
    assert result["changed"] is False and result["diff_lines"] == 0
    assert result["proposed_schema_uri"] == str(output) and result["rows"] > 300
    assert _load(output) == _load(SCHEMA)
    assert "no changes" in caplog.text


def test_a_new_payment_type_is_proposed_for_the_domain_with_the_comments_kept(tmp_path, caplog, untouched_schema):
    def new_payment_type(rows):
        for row in rows[:20]:
            row["payment_type"] = "Crypto Wallet"

    caplog.set_level(logging.INFO)
    output = tmp_path / "proposed.pbtxt"
    result = _propose(_span_csv(tmp_path / "trips.csv", new_payment_type), output)
    assert result["changed"] is True and result["diff_lines"] > 0
    assert '+    value: "Crypto Wallet"' in caplog.text, "the diff a person reviews shows the new value"
    assert "payment_type: string_domain +1 value(s): 'Crypto Wallet'" in caplog.text
    proposed = {feature.name: feature for feature in _load(output).feature}
    current = {feature.name: feature for feature in _load(SCHEMA).feature}
    assert list(proposed["payment_type"].string_domain.value) == [
        *current["payment_type"].string_domain.value,
        "Crypto Wallet",
    ]
    assert {name for name in proposed if proposed[name] != current[name]} == {"payment_type"}
    text = output.read_text()
    assert text.startswith("# Curated schema of the chicago_taxi pipeline")
    assert "# payment_type: the city's documented payment types" in text
    assert result["comment_lines_lost"] == 0


@pytest.mark.parametrize("spelling", ["same", "relative", "symlink"])
def test_writing_the_proposal_over_the_schema_is_refused(tmp_path, monkeypatch, spelling, untouched_schema):
    output = {
        "same": SCHEMA,
        "relative": Path("dags/configs/chicago_taxi/../chicago_taxi/schema.pbtxt"),
        "symlink": tmp_path / "link.pbtxt",
    }[spelling]
    if spelling == "symlink":
        output.symlink_to(SCHEMA)
    monkeypatch.chdir(PROJECT_ROOT)
    with pytest.raises(StageError, match="is the curated schema itself"):
        _propose(tmp_path / "never-read.csv", output)


def test_comments_above_features_are_carried_over_and_the_others_counted():
    text = (
        "# header\n"
        "\n"
        "# about a\n"
        'feature {\n  name: "a"\n  type: INT  # not kept\n}\n'
        "# above an environment: not kept\n"
        'default_environment: "TRAINING"\n'
    )
    header, by_feature, lost = curated_comments(text)
    assert header == ["# header"] and by_feature == {"a": ["# about a"]} and lost == 2
    canonical = 'feature {\n  name: "a"\n  type: INT\n}\nfeature {\n  name: "b"\n}\n'
    assert with_comments(canonical, header, by_feature) == (
        '# header\n\n# about a\nfeature {\n  name: "a"\n  type: INT\n}\nfeature {\n  name: "b"\n}\n'
    )


@pytest.mark.skipif("propose-schema" not in STAGES, reason="propose-schema is not registered in tfpipe.stages.STAGES")
def test_the_command_line_prints_one_result_and_refuses_the_schema_path(tmp_path, untouched_schema):
    data = _span_csv(tmp_path / "trips.csv")
    command = [sys.executable, "-m", "tfpipe", "propose-schema", "--schema-uri", str(SCHEMA), "--data-uri", str(data)]
    done = subprocess.run([*command, "--output-uri", str(tmp_path / "p.pbtxt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().removeprefix(RESULT_PREFIX))
    assert result["changed"] is False and "comments:" in done.stderr
    refused = subprocess.run([*command, "--output-uri", str(SCHEMA)], capture_output=True, text=True)
    assert refused.returncode == 2
    assert json.loads(refused.stdout.strip().removeprefix(ERROR_PREFIX))["error"] == "StageError"
