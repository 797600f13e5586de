"""The shared quota ledger on real databases: a SQLite file and a throwaway Postgres database.

Races run in separate processes (forked before any engine exists; each makes its own), as pipelines' tasks do.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from tests.integration.airflow_stack import PostgresDatabase
from tfpipe.quota import Holder, QuotaLedger, stage_request
from tfpipe.quota.ledger import concurrent_peak

BUDGET = {"cpu": 2, "memory_gib": 16, "gpu": 0, "cpu_hours": 24}
CAP = {"cpu": 2, "memory_gib": 12}
TRAIN = stage_request({"cpu": 1, "memory_gib": 4}, expected_seconds=1200, workers=2)  # 2 cores, 8 GiB


@pytest.fixture(scope="module")
def postgres():
    database = PostgresDatabase()
    yield database
    database.drop()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    # One schema per test on the module's database: drop the tables the previous test made.
    database = request.getfixturevalue("postgres")
    from sqlalchemy import create_engine

    from tfpipe.quota.ledger import metadata

    engine = create_engine(database.sqlalchemy_url)
    metadata.drop_all(engine)
    engine.dispose()
    return database.sqlalchemy_url


def _reserve(ledger: QuotaLedger, run: str, pipeline: str = "chicago_taxi", request=TRAIN, **overrides):
    arguments = {
        "holder": Holder(f"{pipeline}_training", run, "train_model"),
        "pipeline": pipeline,
        "stage": "train",
        "request": request,
        "budget": BUDGET,
        "cap": CAP,
        "lease_seconds": 60,
    }
    arguments.update(overrides)
    return ledger.reserve(**arguments)


# -- processes of the races ---------------------------------------------------------------------------
def _race_once(url: str, run: str, start, results) -> None:
    ledger = QuotaLedger.from_url(url)
    ledger.create_tables()
    start.wait()
    decision = _reserve(ledger, run, pipeline=f"pipeline_{run}")
    results.put((run, decision.granted))


def _churn(url: str, worker: int, start, results, rounds: int) -> None:
    ledger = QuotaLedger.from_url(url)
    ledger.create_tables()
    start.wait()
    granted = 0
    for round_ in range(rounds):
        holder = Holder("churn", f"run_{worker}", "task", round_)
        decision = ledger.reserve(
            holder=holder,
            pipeline=f"pipeline_{worker % 3}",
            stage="s",
            request={"cpu": 1, "memory_gib": 1},
            budget={"cpu": 3, "memory_gib": 100},
            cap={"cpu": 2},
            lease_seconds=30,
        )
        if decision.granted:
            granted += 1
            time.sleep(0.005)
            ledger.release(holder.key, outcome="success")
    results.put(granted)


def _hold_with_heartbeat(url: str, lease: float, ready) -> None:
    """A task that holds a reservation and renews its lease, as a running stage does, until it is killed."""
    ledger = QuotaLedger.from_url(url)
    assert _reserve(ledger, "killed", lease_seconds=lease).granted
    ready.set()
    while True:
        time.sleep(lease / 4)
        ledger.renew(Holder("chicago_taxi_training", "killed", "train_model").key, lease)


def test_two_runs_racing_for_a_budget_that_fits_one_get_exactly_one_reservation(ledger_url):
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    runs = [f"run{i}" for i in range(6)]
    processes = [context.Process(target=_race_once, args=(ledger_url, run, start, results)) for run in runs]
    for process in processes:
        process.start()
    time.sleep(0.5)  # every process has its engine and tables: now they ask at once
    start.set()
    outcomes = dict(results.get(timeout=60) for _ in runs)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert sorted(outcomes.values()) == [False] * 5 + [True]
    ledger = QuotaLedger.from_url(ledger_url)
    assert len(ledger.status()["active"]) == 1
    assert concurrent_peak(ledger.events(), "cpu") == 2
    assert len(ledger.events("refuse")) == 5


def test_many_processes_reserving_and_releasing_never_over_commit(ledger_url):
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=_churn, args=(ledger_url, worker, start, results, 12)) for worker in range(6)]
    for process in processes:
        process.start()
    time.sleep(0.5)
    start.set()
    granted = sum(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    events = QuotaLedger.from_url(ledger_url).events()
    assert granted == sum(1 for event in events if event["kind"] == "reserve") > 0
    assert concurrent_peak(events, "cpu") <= 3, "the shared budget was over-committed"
    for pipeline in ("pipeline_0", "pipeline_1", "pipeline_2"):
        mine = [event for event in events if event["pipeline"] == pipeline]
        assert concurrent_peak(mine, "cpu") <= 2, f"{pipeline} went over its cap"


def test_a_killed_holder_frees_its_reservation_after_its_lease_and_its_retry_does_not_double_count(ledger_url):
    lease = 1.5
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold_with_heartbeat, args=(ledger_url, lease, ready))
    holder.start()
    try:
        assert ready.wait(60)
        ledger = QuotaLedger.from_url(ledger_url)
        time.sleep(lease * 1.5)
        assert not _reserve(ledger, "other").granted, "a renewed lease outlives its first term"
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=10)
        assert not _reserve(ledger, "other").granted, "held until the lease runs out"
        time.sleep(lease + 0.5)
        # The killed task's retry takes its reservation again (the room is free): one reservation, not two.
        retry = _reserve(ledger, "killed")
        assert retry.granted and not retry.reused
        again = _reserve(ledger, "killed")
        assert again.granted and again.reused and again.reservation.id == retry.reservation.id
        status = ledger.status()
        assert [row["holder_key"] for row in status["active"]] == ["chicago_taxi_training/killed/train_model/-1"]
        assert status["used"]["*"]["cpu"] == 2
        assert [
            event["kind"] for event in ledger.events() if event["holder_key"].endswith("/killed/train_model/-1")
        ] == [
            "reserve",
            "expire",
            "reserve",
            "reuse",
        ]
        assert concurrent_peak(ledger.events(), "cpu") == 2
    finally:
        if holder.is_alive():
            holder.kill()


def test_a_retry_while_its_reservation_is_held_reuses_it(tmp_path):
    ledger = QuotaLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    first = _reserve(ledger, "r1", lease_seconds=10)
    second = _reserve(ledger, "r1", lease_seconds=100)
    assert first.granted and second.granted and second.reused
    assert second.reservation.id == first.reservation.id and second.reservation.reuses == 1
    assert second.reservation.lease_expires_at > first.reservation.lease_expires_at
    assert ledger.status()["used"]["*"]["cpu"] == 2


def test_a_pipeline_at_its_cap_cannot_take_more_even_when_the_budget_has_room(tmp_path):
    ledger = QuotaLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    budget, cap = {"cpu": 8, "memory_gib": 64}, {"cpu": 2}
    one_core = {"cpu": 1, "memory_gib": 2}
    for run in ("a", "b"):
        assert _reserve(ledger, run, request=one_core, budget=budget, cap=cap).granted
    refused = _reserve(ledger, "c", request=one_core, budget=budget, cap=cap)
    assert not refused.granted
    [shortage] = refused.refusal.shortages
    assert shortage.scope == "pipeline cap of chicago_taxi" and shortage.resource == "cpu"
    assert shortage.free == 0 and shortage.limit == 2
    assert ledger.status()["used"]["*"]["cpu"] == 2, "6 of the 8 shared cores are free"
    assert _reserve(ledger, "d", pipeline="other", request=one_core, budget=budget, cap=cap).granted


def test_the_refusal_says_what_was_asked_what_is_free_and_who_holds_the_rest(tmp_path):
    ledger = QuotaLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert _reserve(ledger, "scheduled__2016-12-01", pipeline="other_pipeline", request={"cpu": 1}).granted
    refused = _reserve(ledger, "manual__2017-01-05")
    message = refused.refusal.message()
    assert message.splitlines()[0] == (
        "quota refused for chicago_taxi chicago_taxi_training.train_model of run manual__2017-01-05: "
        "asked cpu 2 cores, memory_gib 8 GiB, cpu_hours 0.67 core-hours"
    )
    assert (
        "cpu: asked 2 cores, 1 cores free of the shared budget's 2 cores; held by other_pipeline "
        "other_pipeline_training.train_model of run scheduled__2016-12-01: 1 cores"
    ) in message


def test_core_hours_are_budgeted_over_the_window_and_charged_what_was_measured(tmp_path):
    clock = [1_000_000.0]
    ledger = QuotaLedger(QuotaLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}").engine, clock=lambda: clock[0])
    budget = {"cpu": 4, "cpu_hours": 1.2}
    half_hour = stage_request({"cpu": 1}, expected_seconds=1800)  # 0.5 core-hours
    hours = {"request": half_hour, "budget": budget, "cap": {}, "lease_seconds": 3600}
    assert _reserve(ledger, "a", **hours).granted
    assert _reserve(ledger, "b", **hours).granted
    third = _reserve(ledger, "c", **hours)
    assert not third.granted and third.refusal.resources == ["cpu_hours"]
    clock[0] += 600
    released = ledger.release(
        Holder("chicago_taxi_training", "a", "train_model").key,
        outcome="succeeded",
        usage=[{"cpu_seconds": 360.0, "wall_seconds": 600.0}],
    )
    assert released.charged["cpu_hours"] == 0.1, "measured CPU-seconds replace the estimate"
    assert _reserve(ledger, "c", **hours).granted
    clock[0] += 1800
    for run in ("b", "c"):
        ledger.release(Holder("chicago_taxi_training", run, "train_model").key, outcome="succeeded")
    assert ledger.status()["used"]["*"]["cpu_hours"] == pytest.approx(0.1 + 2400 / 3600 + 1800 / 3600, abs=1e-3)
    clock[0] += 86400 + 1
    assert ledger.status()["used"]["*"]["cpu_hours"] == 0, "a day later, nothing spent counts any more"


def test_no_gpus_in_the_budget_means_none_for_anyone(tmp_path):
    ledger = QuotaLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    refused = _reserve(ledger, "r", request={"cpu": 1, "gpu": 1})
    assert not refused.granted and refused.refusal.resources == ["gpu"]


def test_crossing_the_alert_share_alerts_once_names_pipeline_and_resource_and_rearms_below_it(tmp_path):
    ledger = QuotaLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    budget = {"cpu": 10, "memory_gib": 100}
    one = {"cpu": 1}
    alerts = []
    for run in range(10):
        decision = _reserve(ledger, f"r{run}", pipeline=f"p{run % 2}", request=one, budget=budget, cap={})
        assert decision.granted
        alerts += decision.alerts
    [alert] = alerts
    assert (alert.scope, alert.resource, alert.pipeline, alert.used, alert.limit) == ("shared", "cpu", "p1", 8, 10)
    assert "p1" in alert.subject_line() and "cpu" in alert.subject_line() and "80%" in alert.subject_line()
    # Falls back below 80%: re-armed; the next crossing alerts again, once.
    for run in range(3):
        ledger.release(
            Holder("p0_training" if run % 2 == 0 else "p1_training", f"r{run}", "train_model").key, outcome="ok"
        )
    assert ledger.status()["used"]["*"]["cpu"] == 7
    assert not any(item["fired"] for item in ledger.status()["alerts"])
    again = _reserve(ledger, "r10", pipeline="p0", request=one, budget=budget, cap={})
    assert [alert.resource for alert in again.alerts] == ["cpu"]


def test_provider_quota_past_the_share_alerts_once(tmp_path):
    from tfpipe.quota import Capacity

    ledger = QuotaLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    capacity = {"cpu": Capacity("cpu", 24, 20, "CPUS")}
    [alert] = ledger.observe_provider("gcp:proj/us-central1", capacity, pipeline="chicago_taxi")
    assert alert.scope == "provider" and alert.resource == "cpu" and "chicago_taxi" in alert.subject_line()
    assert ledger.observe_provider("gcp:proj/us-central1", capacity, pipeline="other") == []


def test_the_local_provider_reads_cores_free_memory_and_gpus(tmp_path):
    from tfpipe.quota import LocalQuotaProvider
    from tfpipe.quota.providers import provider_shortages

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemFree:         1048576 kB\nMemAvailable:   20971520 kB\n")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    smi.chmod(0o755)
    capacity = LocalQuotaProvider(meminfo_path=str(meminfo), nvidia_smi=str(smi)).capacity()
    assert capacity["cpu"].limit == len(os.sched_getaffinity(0))
    assert (capacity["memory_gib"].limit, capacity["memory_gib"].free) == (24, 20)
    assert capacity["gpu"].limit == 2
    assert LocalQuotaProvider(meminfo_path=str(meminfo), nvidia_smi=None).capacity()["gpu"].limit == 0
    [shortage] = provider_shortages("local", capacity, {"cpu": 1, "memory_gib": 22})
    assert shortage.describe() == (
        "memory_gib: asked 22 GiB, 20 GiB free of the provider local's 24 GiB; 4 GiB in use "
        "(MemAvailable; used outside the ledger)"
    )
