"""The `monitoring` section of the pipeline config: typed, defaulted, and refusing what cannot work."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.conftest import CONFIG_PATH
from tfpipe.config import MonitoredFeature, MonitoringConfig, load_pipeline_config


def test_the_pipeline_config_monitors_hourly_with_retraining_thresholds_on_fare(monkeypatch):
    monkeypatch.delenv("TFPIPE_SLACK_CONN_ID", raising=False)
    config = load_pipeline_config(CONFIG_PATH).monitoring
    assert config.schedule == "@hourly" and config.start_date.tzinfo is not None
    assert config.skew.features["fare"].retrain == 0.25 and config.drift.features["fare"].severity == "critical"
    # Clock features are never compared hour by hour.
    assert not {"trip_start_hour", "trip_start_day", "trip_start_month"} & set(config.skew.features)
    assert config.alerts.slack_conn_id is None and config.alerts.webhook_conn_id is None  # "${...:-}" is unset


def test_a_retraining_threshold_below_the_alert_threshold_is_refused():
    with pytest.raises(ValidationError, match="retrain without alerting"):
        MonitoredFeature(threshold=0.3, retrain=0.2)
    with pytest.raises(ValidationError, match="extra"):
        MonitoringConfig.model_validate({"skew": {"features": {"fare": {"threshold": 0.2, "retrian": 0.3}}}})
