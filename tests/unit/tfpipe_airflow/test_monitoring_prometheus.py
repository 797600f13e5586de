"""The Prometheus alerting rules of the model server (docker/prometheus/alerts.yml), checked by promtool.

`promtool check rules` validates every expression; `promtool test rules alerts_test.yml` replays series
(server down, no version loaded, traffic stops, 5% errors, slow p99, and a healthy server) and checks which
alerts fire, with their labels and annotations. promtool comes with Debian's `prometheus` package
(`apt-get install -y --no-install-recommends prometheus`); without it only the structure is checked here.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from tests.conftest import PROJECT_ROOT

FOLDER = PROJECT_ROOT / "docker" / "prometheus"
PROMTOOL = shutil.which("promtool")
METRICS = ("tfpipe_serving_requests_total", "tfpipe_serving_request_latency_seconds", "tfpipe_serving_model_loaded")


def test_every_alert_names_a_runbook_section_and_uses_the_servers_metric_names():
    rules = yaml.safe_load((FOLDER / "alerts.yml").read_text())["groups"][0]["rules"]
    alerts = [rule for rule in rules if "alert" in rule]
    assert {rule["alert"] for rule in alerts} >= {
        "TfpipeModelServerDown",
        "TfpipeHighErrorRate",
        "TfpipeHighLatencyP99",
    }
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert re.fullmatch(r"docs/runbook\.md#[a-z0-9-]+", rule["annotations"]["runbook"])
    source = (FOLDER / "alerts.yml").read_text()
    served = (PROJECT_ROOT / "include" / "tfpipe" / "serving" / "metrics.py").read_text()
    for name in set(re.findall(r"tfpipe_serving_[a-z_]+", source)):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert f'"{base}"' in served, f"{name} is not a metric the server exports"
    assert all(metric in source for metric in METRICS)


def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    # `make install` installs it; a missing promtool is a failure, not a pass.
    assert PROMTOOL is not None, "promtool is not installed: apt-get install prometheus (make install does)"
    checked = subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=FOLDER, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=FOLDER, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=FOLDER, capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
