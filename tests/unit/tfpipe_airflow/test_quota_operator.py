"""The quota check, its release and the stage's lease, on a real SQLite ledger (an Airflow connection) and a
real SMTP server; the deferred path runs the trigger's async run() for real and feeds its event back."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from tests.integration.airflow_stack import free_port
from tfpipe.config import AlertsConfig, QuotaConfig
from tfpipe.quota import Capacity, Holder
from tfpipe.quota.metrics import read_textfile
from tfpipe_airflow.hooks import quota as quota_hooks
from tfpipe_airflow.operators.quota import (
    CheckComputeQuotaOperator,
    GuardedStage,
    QuotaLapsed,
    QuotaLease,
    QuotaRefused,
    ReleaseComputeQuotaOperator,
)
from tfpipe_airflow.triggers.quota import QuotaAvailableTrigger

DAG_ID = "chicago_taxi_training"
ALERTS = AlertsConfig(email=["ml-oncall@example.com"], smtp_conn_id="tfpipe_test_smtp")


class FixedProvider:
    """A machine with plenty of everything, so that only the ledger decides."""

    name = "local"

    def capacity(self) -> dict[str, Capacity]:
        return {"cpu": Capacity("cpu", 64, 0, "test"), "memory_gib": Capacity("memory_gib", 512, 10, "test")}


class FakeTI:
    def __init__(self, xcoms: dict[tuple[str, str, int], Any] | None = None) -> None:
        self.dag_id = DAG_ID
        self.xcoms = xcoms or {}

    def xcom_pull(self, task_ids: str, key: str = "return_value", map_indexes: Any = None) -> Any:
        if isinstance(map_indexes, list):
            return [self.xcoms.get((task_ids, key, index)) for index in map_indexes]
        return self.xcoms.get((task_ids, key, -1))


def context(run_id: str, ti: FakeTI | None = None, **extra: Any) -> dict[str, Any]:
    return {"dag": SimpleNamespace(dag_id=DAG_ID), "run_id": run_id, "ti": ti or FakeTI(), **extra}


@pytest.fixture
def ledger_path(tmp_path, monkeypatch):
    path = tmp_path / "quota" / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_TFPIPE_TEST_QUOTA", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    monkeypatch.setattr(quota_hooks, "provider_for", lambda quota: FixedProvider())
    return path


def quota_config(tmp_path, **overrides: Any) -> QuotaConfig:
    values: dict[str, Any] = {
        "ledger": {"conn_id": "tfpipe_test_quota"},
        "budget": {"cpu": 2, "memory_gib": 16},
        "pipeline_cap": {},
        "metrics_path": str(tmp_path / "metrics" / "tfpipe_quota.prom"),
        "poll_seconds": 0.2,
        "stages": {
            "train": {"cpu": 1, "memory_gib": 4, "expected_minutes": 20},
            "tune_trial": {"cpu": 1, "memory_gib": 1, "expected_minutes": 5},
            "one_core": {"cpu": 1, "memory_gib": 1, "expected_minutes": 5},
        },
    }
    values.update(overrides)
    return QuotaConfig.model_validate(values)


def guarded(quota: QuotaConfig, stage: str = "train", task_id: str = "train_model", **kwargs: Any) -> GuardedStage:
    workers = kwargs.pop("workers", 2 if stage == "train" else 1)
    return GuardedStage(
        pipeline="chicago_taxi",
        stage=stage,
        task_id=task_id,
        quota=quota,
        request=quota.request_for(stage),
        workers=workers,
        **kwargs,
    )


def check(quota: QuotaConfig, **kwargs: Any) -> CheckComputeQuotaOperator:
    stage = kwargs.pop("stage", "train")
    task_id = kwargs.pop("task_id", "train_model")
    return CheckComputeQuotaOperator(task_id=f"check_quota_{task_id}", guarded=guarded(quota, stage, task_id), **kwargs)


def subjects(inbox) -> list[str]:
    return [message["Subject"] for _, message in inbox.messages]


def body(message) -> str:
    part = next(part for part in message.walk() if part.get_content_type() == "text/html")
    return part.get_payload(decode=True).decode()


def test_a_refused_check_fails_at_once_saying_what_was_asked_what_is_free_and_who_holds_it(
    ledger_path, tmp_path, smtp_inbox
):
    quota = quota_config(tmp_path)
    first = check(quota, deferrable=False, alerts=ALERTS).execute(context("scheduled__2016-11-01"))
    assert first["resources"] == {"cpu": 2.0, "memory_gib": 8.0, "cpu_hours": 0.6667} and not first["reused"]
    with pytest.raises(QuotaRefused) as refused:
        check(quota, deferrable=False, alerts=ALERTS).execute(context("manual__2016-12-05"))
    message = str(refused.value)
    assert "asked cpu 2 cores, memory_gib 8 GiB" in message
    assert "0 cores free of the shared budget's 2 cores" in message
    assert "held by chicago_taxi chicago_taxi_training.train_model of run scheduled__2016-11-01: 2 cores" in message
    refusals = [m for _, m in smtp_inbox.messages if "refused" in m["Subject"]]
    assert len(refusals) == 1, subjects(smtp_inbox)
    assert refusals[0]["Subject"] == (
        "[tfpipe] quota request refused: chicago_taxi chicago_taxi_training.train_model of run manual__2016-12-05 "
        "(short of cpu)"
    )
    assert "held by" in body(refusals[0])


def test_a_retry_of_the_check_reuses_its_reservation(ledger_path, tmp_path):
    quota = quota_config(tmp_path)
    first = check(quota).execute(context("r1"))
    second = check(quota).execute(context("r1"))
    assert second["reused"] and second["reservation_id"] == first["reservation_id"]


def test_crossing_the_alert_share_sends_one_email_naming_pipeline_and_resource(ledger_path, tmp_path, smtp_inbox):
    quota = quota_config(tmp_path, budget={"cpu": 10, "memory_gib": 100})
    for run in range(10):
        check(quota, stage="one_core", task_id="validate_examples", alerts=ALERTS).execute(context(f"run_{run}"))
    [(recipients, message)] = smtp_inbox.messages
    assert recipients == ["ml-oncall@example.com"]
    assert message["Subject"].startswith("[tfpipe] quota limit about to be reached: chicago_taxi took cpu to 80%")
    text = body(message)
    assert "8 cores of 10 cores" in text and "chicago_taxi_training.validate_examples of run run_0" in text


def _first_event(trigger: QuotaAvailableTrigger, during=None) -> tuple[dict[str, Any], float]:
    async def run() -> tuple[dict[str, Any], float]:
        started = time.monotonic()
        helper = asyncio.create_task(during()) if during else None
        try:
            async for event in trigger.run():
                return event.payload, time.monotonic() - started
        finally:
            if helper:
                await helper
        raise AssertionError("no event")

    return asyncio.run(run())


def test_a_deferred_check_waits_in_the_trigger_and_takes_the_room_as_it_frees(ledger_path, tmp_path, smtp_inbox):
    quota = quota_config(tmp_path)
    check(quota, alerts=ALERTS).execute(context("scheduled__2016-11-01"))
    waiting = check(quota, alerts=ALERTS)
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(context("manual__2016-12-05"))
    trigger = deferred.value.trigger
    assert isinstance(trigger, QuotaAvailableTrigger) and deferred.value.method_name == "execute_complete"
    # The trigger goes through serialization, as it does to the triggerer.
    path, kwargs = trigger.serialize()
    assert path == "tfpipe_airflow.triggers.quota.QuotaAvailableTrigger"
    trigger = QuotaAvailableTrigger(**json.loads(json.dumps(kwargs)))

    async def release_later() -> None:
        await asyncio.sleep(1.0)
        ledger = quota_hooks.QuotaLedgerHook("tfpipe_test_quota").get_ledger()
        await asyncio.to_thread(
            ledger.release, Holder(DAG_ID, "scheduled__2016-11-01", "train_model").key, outcome="succeeded"
        )

    event, waited = _first_event(trigger, release_later)
    assert event["status"] == "reserved" and waited >= 1.0
    result = waiting.execute_complete(context("manual__2016-12-05"), event)
    assert result["holder_key"] == f"{DAG_ID}/manual__2016-12-05/train_model/-1"
    ledger = quota_hooks.QuotaLedgerHook("tfpipe_test_quota").get_ledger()
    assert [row["holder_key"] for row in ledger.status()["active"]] == [result["holder_key"]]
    assert sum("refused" in subject for subject in subjects(smtp_inbox)) == 1, "one e-mail when it started waiting"


def test_a_deferred_check_that_waits_in_vain_fails_with_the_message(ledger_path, tmp_path):
    quota = quota_config(tmp_path)
    check(quota).execute(context("holder"))
    waiting = check(quota, wait_timeout=dt.timedelta(seconds=1))
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(context("waiter"))
    event, _ = _first_event(deferred.value.trigger)
    assert event["status"] == "timeout" and event["polls"] >= 2
    with pytest.raises(QuotaRefused, match="in vain") as refused:
        waiting.execute_complete(context("waiter"), event)
    assert "held by chicago_taxi chicago_taxi_training.train_model of run holder" in str(refused.value)


def test_an_unreachable_ledger_is_an_error_event_not_a_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(quota_hooks, "provider_for", lambda quota: FixedProvider())
    monkeypatch.setattr("tfpipe_airflow.triggers.quota.MAX_CONSECUTIVE_ERRORS", 2)
    quota = quota_config(tmp_path, ledger={"conn_id": "tfpipe_no_such_connection"})
    spec = {
        "holder": Holder(DAG_ID, "r", "t").to_dict(),
        "pipeline": "chicago_taxi",
        "stage": "train",
        "request": {"cpu": 1},
        "budget": {"cpu": 2},
        "cap": {},
        "lease_seconds": 60,
    }
    trigger = QuotaAvailableTrigger(
        spec=spec, quota=quota.model_dump(mode="json"), deadline=time.time() + 30, poll_seconds=0.1
    )
    event, _ = _first_event(trigger)
    assert event["status"] == "error" and "tfpipe_no_such_connection" in event["message"]


def test_the_release_records_what_the_stage_used_frees_it_and_exports_metrics(ledger_path, tmp_path):
    quota = quota_config(tmp_path)
    check(quota).execute(context("r1"))
    usage = {"wall_seconds": 812.5, "cpu_seconds": 1490.0, "peak_rss_mib": 2900.0}
    ti = FakeTI({("train_model", "usage", -1): usage})
    release = ReleaseComputeQuotaOperator(task_id="release_quota_train_model", guarded=guarded(quota))
    result = release.execute(context("r1", ti))
    assert result == {"holder_key": f"{DAG_ID}/r1/train_model/-1", "released": True, "recorded": 1}
    ledger = quota_hooks.QuotaLedgerHook("tfpipe_test_quota").get_ledger()
    [row] = ledger.usage_history("chicago_taxi", "train")
    assert (row["wall_seconds"], row["cpu_seconds"], row["peak_rss_mib"], row["cores"]) == (812.5, 1490.0, 2900.0, 2)
    status = ledger.status()
    assert status["active"] == [] and status["used"]["*"]["cpu_hours"] == pytest.approx(1490 / 3600, abs=1e-3)
    metrics = read_textfile(quota.metrics_path)
    assert ({"scope": "shared", "subject": "*", "resource": "cpu"}, 2.0) in metrics["tfpipe_quota_limit"]
    assert ({"pipeline": "chicago_taxi", "resource": "cpu"}, 0.0) in metrics["tfpipe_quota_reserved"]
    # Released twice (a cleared teardown): nothing happens.
    assert release.execute(context("r1", ti))["released"] is False


def test_the_release_of_a_mapped_stage_reads_every_instance(ledger_path, tmp_path):
    quota = quota_config(tmp_path)
    stage = guarded(quota, "tune_trial", "tune_model", parallel=2, instances=4, mapped=True)
    CheckComputeQuotaOperator(task_id="check_quota_tune_model", guarded=stage).execute(context("r1"))
    usages = {
        ("tune_model", "usage", index): {"wall_seconds": 60.0 + index, "cpu_seconds": 50.0} for index in (0, 1, 3)
    }
    result = ReleaseComputeQuotaOperator(task_id="release_quota_tune_model", guarded=stage).execute(
        context("r1", FakeTI(usages))
    )
    assert result["recorded"] == 3 and result["released"]
    history = quota_hooks.QuotaLedgerHook("tfpipe_test_quota").get_ledger().usage_history("chicago_taxi", "tune_trial")
    assert sorted(row["map_index"] for row in history) == [0, 1, 3]


def test_the_running_stage_keeps_its_lease_alive_and_a_killed_check_gives_it_back(ledger_path, tmp_path):
    quota = quota_config(tmp_path, lease_seconds=1.2)
    stage = guarded(quota)
    check(quota).execute(context("r1"))
    lease = QuotaLease(stage)
    lease.before_execute(context("r1"))
    time.sleep(3.0)  # more than two leases: the heartbeat thread renewed it
    ledger = quota_hooks.QuotaLedgerHook("tfpipe_test_quota").get_ledger()
    assert [row["holder_key"] for row in ledger.status()["active"]] == [f"{DAG_ID}/r1/train_model/-1"]
    lease.on_finished(context("r1"))
    time.sleep(2.0)
    assert ledger.status()["active"] == [], "no heartbeat after the stage ended: the lease ran out"

    killed = check(quota)
    killed._holding = Holder(DAG_ID, "r2", "train_model").key
    ledger.reserve(
        holder=Holder(DAG_ID, "r2", "train_model"),
        pipeline="chicago_taxi",
        stage="train",
        request={"cpu": 2},
        budget={"cpu": 2},
        cap={},
        lease_seconds=600,
    )
    killed.on_kill()
    assert ledger.status()["active"] == []


def test_a_stage_whose_reservation_lapsed_takes_it_again_or_fails_when_the_room_is_gone(ledger_path, tmp_path):
    quota = quota_config(tmp_path, lease_seconds=1, start_within_minutes=0.01)  # 0.6 s to start
    stage = guarded(quota)
    check(quota).execute(context("r1"))
    time.sleep(1.0)
    lease = QuotaLease(stage)
    lease.before_execute(context("r1"))  # lapsed, room free: taken again under the same key
    lease.on_finished(context("r1"))
    ledger = quota_hooks.QuotaLedgerHook("tfpipe_test_quota").get_ledger()
    assert [event["kind"] for event in ledger.events() if "/r1/" in event["holder_key"]] == [
        "reserve",
        "expire",
        "reserve",
    ]
    time.sleep(1.2)
    check(quota).execute(context("r2"))
    time.sleep(0.8)
    check(quota).execute(context("r3"))  # takes the room r2 let lapse
    with pytest.raises(
        QuotaLapsed, match=re.escape("held by chicago_taxi chicago_taxi_training.train_model of run r3")
    ):
        QuotaLease(stage).before_execute(context("r2"))


def test_a_retry_holds_the_reservation_over_the_retry_delay(ledger_path, tmp_path):
    quota = quota_config(tmp_path, start_within_minutes=1)
    check(quota).execute(context("r1"))
    lease = QuotaLease(guarded(quota))
    lease.on_retry(context("r1", task=SimpleNamespace(retry_delay=dt.timedelta(minutes=10))))
    [row] = quota_hooks.QuotaLedgerHook("tfpipe_test_quota").get_ledger().status()["active"]
    assert row["lease_expires_at"] - time.time() == pytest.approx(11 * 60, abs=5)


def test_alert_email_failures_do_not_change_the_decision(ledger_path, tmp_path, monkeypatch):
    extra = '{"disable_tls": true, "disable_ssl": true, "timeout": 2, "retry_limit": 1}'
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFPIPE_TEST_SMTP",
        json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": free_port(), "extra": extra}),
    )
    quota = quota_config(tmp_path)
    assert check(quota, alerts=ALERTS).execute(context("r1"))["resources"]["cpu"] == 2


def test_concurrent_checks_in_threads_grant_exactly_what_fits(ledger_path, tmp_path):
    quota = quota_config(tmp_path, budget={"cpu": 3, "memory_gib": 100})
    granted, refused = [], []

    def one(run: str) -> None:
        try:
            check(quota, stage="one_core", task_id="validate_examples", deferrable=False).execute(context(run))
            granted.append(run)
        except QuotaRefused:
            refused.append(run)

    threads = [threading.Thread(target=one, args=(f"run_{index}",)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 3 and len(refused) == 5


@pytest.mark.parametrize(
    ("connection", "url"),
    [
        ('{"conn_type": "sqlite", "host": "/srv/quota/ledger.db"}', "sqlite:////srv/quota/ledger.db"),
        ("sqlite:////srv/quota/ledger.db", "sqlite:////srv/quota/ledger.db"),
        (
            "postgresql://tfpipe:s%40cret@db.internal:5433/tfpipe_quota",  # pragma: allowlist secret
            "postgresql+psycopg2://tfpipe:s%40cret@db.internal:5433/tfpipe_quota",  # pragma: allowlist secret
        ),
    ],
)
def test_the_ledger_connection_becomes_a_database_url(monkeypatch, connection, url):
    monkeypatch.setenv("AIRFLOW_CONN_TFPIPE_TEST_LEDGER_URL", connection)
    assert quota_hooks.QuotaLedgerHook("tfpipe_test_ledger_url").get_url() == url


def test_an_undefined_ledger_connection_falls_back_to_the_local_file_or_fails(tmp_path, caplog):
    hook = quota_hooks.QuotaLedgerHook("tfpipe_undefined_ledger", sqlite_fallback=str(tmp_path / "ledger.db"))
    assert hook.get_url() == f"sqlite:///{tmp_path / 'ledger.db'}"
    with pytest.raises(Exception, match="is not defined: create it"):
        quota_hooks.QuotaLedgerHook("tfpipe_undefined_ledger").get_url()
    with pytest.raises(Exception, match="the ledger needs sqlite or postgres"):
        quota_hooks.connection_url(SimpleNamespace(conn_type="mysql", conn_id="x"))


def test_a_stage_that_defers_itself_gets_the_lease_it_asks_for(ledger_path, tmp_path):
    """No heartbeat runs while a guarded task is deferred (the canary rollout): its lease covers its timeout."""
    quota = quota_config(tmp_path, lease_seconds=60)
    check(quota).execute(context("r1"))
    lease = QuotaLease(guarded(quota, lease_seconds=3600))
    lease.before_execute(context("r1"))
    lease._stop_heartbeat()
    [row] = quota_hooks.QuotaLedgerHook("tfpipe_test_quota").get_ledger().status()["active"]
    assert row["lease_expires_at"] - time.time() == pytest.approx(3600, abs=5)
