from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import CONFIG_PATH, PROJECT_ROOT
from tfpipe.config import ExecutionConfig, expand_environment, load_pipeline_config
from tfpipe.errors import ConfigError


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _valid() -> dict:
    return yaml.safe_load(CONFIG_PATH.read_text())


def test_the_shipped_config_loads_with_paths_under_the_project(monkeypatch):
    for name in ("TFPIPE_ARTIFACT_ROOT", "TFPIPE_LANDING_ROOT", "TFPIPE_ML_PYTHON", "TFPIPE_EXECUTION_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TFPIPE_PROJECT_ROOT", raising=False)
    config = load_pipeline_config(CONFIG_PATH)
    assert config.pipeline == "chicago_taxi"
    assert config.execution.mode == "local"
    assert config.artifacts.root == str(PROJECT_ROOT / "state" / "artifacts")
    assert config.data.landing_uri == str(PROJECT_ROOT / "state" / "landing" / "chicago_taxi")
    assert config.execution.local.python == str(PROJECT_ROOT / ".venv-ml" / "bin" / "python")
    assert config.source_path == str(CONFIG_PATH)


def test_environment_overrides_reach_the_typed_config(monkeypatch):
    monkeypatch.setenv("TFPIPE_ARTIFACT_ROOT", "gs://bucket/tfpipe")
    monkeypatch.setenv("TFPIPE_EXECUTION_MODE", "kubernetes")
    config = load_pipeline_config(CONFIG_PATH)
    assert config.artifacts.root == "gs://bucket/tfpipe"
    assert config.execution.mode == "kubernetes"


def test_unknown_key_is_named_with_its_path(tmp_path):
    document = _valid()
    document["execution"]["local"]["pyhton"] = "/usr/bin/python3"
    with pytest.raises(ConfigError) as raised:
        load_pipeline_config(_write(tmp_path, document))
    assert "execution.local.pyhton: unknown key" in str(raised.value)
    assert str(tmp_path / "pipeline.yaml") in str(raised.value)


def test_missing_and_mistyped_keys_are_each_named(tmp_path):
    document = _valid()
    del document["data"]["label"]
    document["airflow"]["retries"] = "twice"
    document["execution"]["mode"] = "docker"
    with pytest.raises(ConfigError) as raised:
        load_pipeline_config(_write(tmp_path, document))
    message = str(raised.value)
    assert "data.label: Field required" in message
    assert "airflow.retries:" in message and "'twice'" in message
    assert "execution.mode:" in message and "'docker'" in message


def test_selected_execution_mode_needs_its_section(tmp_path):
    document = _valid()
    document["execution"] = {"mode": "vertex_ai", "local": {"python": "python3"}}
    with pytest.raises(ConfigError, match="mode is 'vertex_ai' but the 'vertex_ai' section is missing"):
        load_pipeline_config(_write(tmp_path, document))


@pytest.mark.parametrize("image", ["ghcr.io/tfpipe/ml", "ghcr.io/tfpipe/ml:latest"])
def test_images_must_be_pinned(tmp_path, image):
    document = _valid()
    document["execution"]["kubernetes"]["image"] = image
    with pytest.raises(ConfigError, match=r"execution\.kubernetes\.image: image .* must be pinned"):
        load_pipeline_config(_write(tmp_path, document))


def test_spans_must_start_on_the_first_of_a_month(tmp_path):
    document = _valid()
    document["spans"]["first"] = "2013-01-15"
    with pytest.raises(ConfigError, match="spans: monthly spans start on the first day of a month"):
        load_pipeline_config(_write(tmp_path, document))


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read pipeline config"):
        load_pipeline_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline_config(bad)
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_pipeline_config(bad)


def test_environment_expansion():
    environ = {"SET": "value", "EMPTY": ""}
    assert expand_environment({"a": ["${SET}", "x-${MISSING:-fallback}", "${EMPTY:-d}"]}, environ) == {
        "a": ["value", "x-fallback", "d"]
    }
    with pytest.raises(ConfigError, match="MISSING is not set"):
        expand_environment("${MISSING}", environ)


def test_relative_paths_resolve_against_the_given_base(tmp_path):
    document = _valid()
    document["artifacts"]["root"] = "out/artifacts"
    config = load_pipeline_config(_write(tmp_path, document), base_dir=tmp_path)
    assert config.artifacts.root == str(tmp_path / "out" / "artifacts")


def test_bare_interpreter_name_is_left_for_path_lookup():
    execution = ExecutionConfig.model_validate({"local": {"python": "python3"}})
    assert execution.local.python == "python3"


# -- quota --------------------------------------------------------------------------------------------
def test_the_shipped_quota_section_loads_with_its_ledger_under_the_project(monkeypatch):
    for name in (
        "TFPIPE_QUOTA_PROVIDER",
        "TFPIPE_QUOTA_LEDGER_CONN",
        "TFPIPE_QUOTA_LEDGER_SQLITE",
        "TFPIPE_PROJECT_ROOT",
    ):
        monkeypatch.delenv(name, raising=False)
    quota = load_pipeline_config(CONFIG_PATH).quota
    assert quota is not None and quota.provider == "local"
    assert quota.ledger.conn_id == "tfpipe_quota_ledger"
    assert quota.ledger.sqlite_fallback == str(PROJECT_ROOT / "state" / "quota" / "ledger.db")
    assert quota.budget.as_dict() == {"cpu": 2, "memory_gib": 16, "gpu": 0, "cpu_hours": 24}
    assert quota.alert_share == 0.8 and quota.on_refusal == "defer"
    assert set(quota.stages) == {"validate", "tune_trial", "train", "evaluate", "serve"}
    serve = quota.request_for("serve")
    assert (serve.on_refusal, serve.wait_timeout_minutes) == ("defer", 240), "a stage's own refusal settings"
    with pytest.raises(KeyError, match="no request for 'ingest'"):
        quota.request_for("ingest")


def test_a_quota_for_google_cloud_needs_its_section(tmp_path, monkeypatch):
    monkeypatch.setenv("TFPIPE_QUOTA_PROVIDER", "gcp")
    assert load_pipeline_config(CONFIG_PATH).quota.gcp.service == "vertex_ai"
    document = _valid()
    document["quota"]["provider"] = "gcp"
    del document["quota"]["gcp"]
    with pytest.raises(ConfigError, match=r"quota: provider is .gcp. but the quota\.gcp section is missing"):
        load_pipeline_config(_write(tmp_path, document))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pipeline_cap": {"cpu": 4}}, "pipeline_cap is above the shared budget for ['cpu']"),
        (
            {"stages": {"train": {"cpu": 1, "memory_gib": 64, "expected_minutes": 20}}},
            "stages.train asks for memory_gib 64 per worker, more than the budget or cap allows (12)",
        ),
        ({"budget": {"cpus": 2}}, "quota.budget.cpus: unknown key"),
        ({"alert_share": 1.5}, "quota.alert_share: Input should be less than or equal to 1"),
        ({"on_refusal": "retry"}, "quota.on_refusal: Input should be 'fail' or 'defer'"),
    ],
)
def test_quota_mistakes_are_named(tmp_path, change, message):
    document = _valid()
    document["quota"].update(change)
    with pytest.raises(ConfigError) as raised:
        load_pipeline_config(_write(tmp_path, document))
    assert message in str(raised.value)


def test_no_quota_section_means_no_quota(tmp_path):
    document = _valid()
    del document["quota"]
    assert load_pipeline_config(_write(tmp_path, document)).quota is None
