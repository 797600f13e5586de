"""CanaryRolloutOperator's decisions, driven through its real defer / execute_complete loop.

The deployment target is an in-memory stand-in that records every call (the real model server is in
tests/integration/test_canary_rollout.py); the analysis events are what CanaryAnalysisTrigger yields.
E-mails go through a real SMTP server (aiosmtpd; the smtp_inbox fixture in conftest.py).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException, TaskAwaitingInput, TaskDeferred

from tfpipe.config import AlertsConfig, RolloutConfig, ServingConfig
from tfpipe.rollout import AnalysisResult, Verdict
from tfpipe_airflow.deployment import Deployment, DeploymentTarget, RollbackResult
from tfpipe_airflow.operators import rollout as rollout_module
from tfpipe_airflow.operators.rollout import CanaryRolloutOperator, RollbackDeploymentOperator
from tfpipe_airflow.triggers.rollout import CanaryAnalysisTrigger

SERVING = ServingConfig.model_validate(
    {"model_name": "big_tipper", "local": {"port": 8599, "request_log": {"dir": "/tmp/unused"}}}
)


class FakeTarget(DeploymentTarget):
    kind = "fake"

    def __init__(self, stable: str | None = "1", canary: str | None = None, percent: float = 0.0) -> None:
        self.stable, self.canary, self.percent = stable, canary, percent
        self.loaded = {v: f"/models/{v}" for v in (stable, canary) if v}
        self.calls: list[tuple] = []

    def deployment(self) -> Deployment:
        return Deployment(self.stable, self.canary, self.percent if self.canary else 0.0, tuple(self.loaded))

    def load(self, version: str, model_uri: str) -> None:
        self.calls.append(("load", version, model_uri))
        self.loaded[version] = model_uri

    def set_traffic(self, stable: str, canary: str | None, canary_percent: float) -> Deployment:
        self.calls.append(("set_traffic", stable, canary, canary_percent))
        self.stable, self.canary, self.percent = stable, canary, canary_percent
        return self.deployment()

    def rollback(self, reason: str, stable: str | None = None) -> RollbackResult:
        self.calls.append(("rollback", reason, stable))
        self.stable, self.canary, self.percent = stable or self.stable, None, 0.0
        return RollbackResult(self.deployment(), 0.0002, 0.003)

    def promote(self) -> Deployment:
        self.calls.append(("promote",))
        self.stable, self.canary, self.percent = self.canary, None, 0.0
        return self.deployment()

    def unload(self, version: str) -> None:
        self.calls.append(("unload", version))
        self.loaded.pop(version)

    def metrics_url(self) -> str | None:
        return "http://127.0.0.1:8599/metrics"

    def url(self) -> str:
        return "http://127.0.0.1:8599/v1/models/big_tipper"

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


class FakeTI:
    def __init__(self, task_id: str) -> None:
        self.id = uuid.uuid4()
        self.dag_id, self.run_id, self.task_id, self.map_index = "chicago_taxi_training", "manual__r1", task_id, -1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = json.loads(json.dumps(value))


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch) -> FakeTarget:
    fake = FakeTarget()
    monkeypatch.setattr(rollout_module, "build_target", lambda serving, actor=None: fake)
    return fake


ALERTS = AlertsConfig(email=["ml-oncall@example.com"], smtp_conn_id="tfpipe_test_smtp")


def operator(task_id: str = "canary_rollout", *, steps: list[int] | None = None, **analysis: Any):
    rollout = RolloutConfig.model_validate(
        {"steps": [10, 50, 100], "analysis": {"window_seconds": 3, "poll_seconds": 1, **analysis}}
    )
    with DAG("chicago_taxi_training", schedule=None) as dag:
        task = CanaryRolloutOperator(
            task_id=task_id,
            version="2",
            model_uri="/models/2",
            serving=SERVING,
            rollout=rollout,
            alerts=ALERTS,
            steps=steps,
        )
    ti = FakeTI(task_id)
    return task, {"ti": ti, "task_instance": ti, "dag": dag, "run_id": ti.run_id, "task": task}


def event(verdict: Verdict, *reasons: str, reference: dict | None = None) -> dict[str, Any]:
    measurements = {"canary_requests": 150, "error_rate": 0.0}
    return AnalysisResult(verdict, list(reasons) or ["ok"], [], measurements, reference).to_dict()


OK = event(Verdict.SUCCESSFUL)


def drive(task, context, events: list[dict[str, Any]]) -> Any:
    """Run execute, then feed each event to the method the task deferred to, as the triggerer would."""
    deferrals = []
    try:
        return task.execute(context)
    except TaskDeferred as deferred:
        deferrals.append(deferred)
    for payload in events:
        deferred = deferrals[-1]
        try:
            return getattr(task, deferred.method_name)(context, event=payload, **deferred.kwargs)
        except TaskDeferred as again:
            deferrals.append(again)
    raise AssertionError(f"still deferred after {len(events)} events: {deferrals[-1].trigger.serialize()}")


def test_the_rollout_resumes_from_the_event_alone_as_airflow_dags_test_delivers_it(target):
    """`airflow dags test` hands execute_complete the trigger's event without the defer kwargs: the
    trigger carries the rollout's state in its event (`carry`), and the rollout goes on from there."""
    task, context = operator()
    with pytest.raises(TaskDeferred) as raised:
        task.execute(context)
    deferred = raised.value
    while True:
        carried = deferred.trigger.serialize()[1]["carry"]
        assert carried == deferred.kwargs["state"]
        try:
            result = task.execute_complete(context, event={**OK, "carry": carried})
        except TaskDeferred as again:
            deferred = again
            continue
        break
    assert result["promoted"] is True and (target.stable, target.canary) == ("2", None)


def test_an_event_without_the_rollouts_state_aborts_the_canary(target):
    task, context = operator()
    with pytest.raises(TaskDeferred):
        task.execute(context)
    with pytest.raises(AirflowFailException, match="without the rollout's state"):
        task.execute_complete(context, event=OK)
    assert target.percent == 0 and target.canary is None


def steps_taken(target: FakeTarget) -> list[float]:
    return [call[3] for call in target.calls if call[0] == "set_traffic"]


def test_a_healthy_canary_goes_through_every_step_and_is_promoted(target):
    task, context = operator()
    triggers: list[CanaryAnalysisTrigger] = []
    original = task.defer

    def record(**kwargs: Any) -> None:
        triggers.append(kwargs["trigger"])
        original(**kwargs)

    task.defer = record  # type: ignore[method-assign]
    reference = {"version": "1", "requests": 900, "latency": [[0.01, 900]], "predictions": [[1.0, 900]]}
    result = drive(task, context, [event(Verdict.SUCCESSFUL, reference=reference), OK, OK])

    assert target.names() == ["load", "set_traffic", "set_traffic", "set_traffic", "promote"]
    assert steps_taken(target) == [10, 50, 100]
    assert (target.stable, target.canary) == ("2", None)
    assert result["promoted"] is True and result["previous_stable"] == "1"
    assert [a["percent"] for a in result["analyses"]] == [10, 50, 100]
    first = triggers[0].serialize()[1]
    assert first["metrics_url"] == "http://127.0.0.1:8599/metrics" and first["canary_percent"] == 10
    assert first["stable_version"] == "1" and first["analysis"]["window_seconds"] == 3
    assert triggers[2].reference == reference, "the 100% step compares with stable's earlier window"
    assert context["ti"].xcoms["deployment_url"] == "http://127.0.0.1:8599/v1/models/big_tipper"
    assert context["ti"].xcoms["rollout"]["outcome"] == "promoted"


def test_a_failed_analysis_rolls_back_in_one_call_and_says_why(target, smtp_inbox):
    task, context = operator()
    drift = "prediction drift (Jensen-Shannon distance ...) 0.812 is above max_prediction_drift 0.2"
    with pytest.raises(AirflowFailException) as failure:
        drive(task, context, [OK, event(Verdict.FAILED, drift)])

    assert target.names() == ["load", "set_traffic", "set_traffic", "rollback"]
    [(_, reason, stable)] = [call for call in target.calls if call[0] == "rollback"]
    assert stable is None and "aborted at 50%" in reason and "max_prediction_drift" in reason
    assert (target.stable, target.canary, target.percent) == ("1", None, 0.0), "stable untouched, canary at 0"
    message = str(failure.value)
    assert message.startswith("canary rollout of big_tipper version 2 aborted at 50% and rolled back")
    assert "all traffic to stable version 1" in message and drift in message
    record = context["ti"].xcoms["rollout"]
    assert record["outcome"] == "rolled back" and record["rollback"]["seconds"] == 0.0002
    assert record["rollback"]["decision_to_zero_seconds"] < 1
    [(recipients, mail)] = smtp_inbox.messages
    assert recipients == ["ml-oncall@example.com"]
    assert "ROLLED BACK at 50%" in mail["Subject"]
    body = next(p for p in mail.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    assert "max_prediction_drift 0.2" in body


def test_failures_up_to_the_limit_repeat_the_step(target, monkeypatch):
    task, context = operator(failure_limit=1)
    result = drive(task, context, [event(Verdict.FAILED, "p99 latency ..."), OK, OK, OK])
    assert steps_taken(target) == [10, 10, 50, 100] and result["promoted"]

    target2 = FakeTarget()
    monkeypatch.setattr(rollout_module, "build_target", lambda serving, actor=None: target2)
    task, context = operator(failure_limit=1)
    with pytest.raises(AirflowFailException, match="2 failed analyses, more than failure_limit 1"):
        drive(task, context, [event(Verdict.FAILED, "a"), OK, event(Verdict.FAILED, "b")])
    assert target2.names()[-1] == "rollback"


def test_measurement_errors_are_counted_apart_and_consecutively(target):
    task, context = operator(error_limit=2)
    outage = event(Verdict.ERROR, "the metrics at http://127.0.0.1:8599/metrics could not be read")
    result = drive(task, context, [outage, outage, OK, outage, OK, OK])
    assert result["promoted"], "two errors in a row are tolerated, and a success resets the count"

    task, context = operator(error_limit=2)
    target.stable, target.canary, target.percent, target.calls = "1", None, 0.0, []
    with pytest.raises(AirflowFailException) as failure:
        drive(task, context, [outage, outage, outage])
    assert "3 consecutive analyses could not measure the canary, more than error_limit 2" in str(failure.value)
    assert "not a model failure" in str(failure.value)
    assert target.names()[-1] == "rollback"


def test_an_inconclusive_analysis_fails_when_the_policy_says_so(target):
    task, context = operator(inconclusive="fail")
    few = "the canary (version 2) served 40 requests in the window, fewer than min_requests (100): too few to judge"
    with pytest.raises(
        AirflowFailException, match=re.escape("inconclusive analysis: the canary (version 2) served 40")
    ):
        drive(task, context, [event(Verdict.INCONCLUSIVE, few)])
    assert target.names()[-1] == "rollback"


@pytest.fixture
def hitl(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    asked: list[dict[str, Any]] = []
    monkeypatch.setattr("airflow.sdk.execution_time.hitl.upsert_hitl_detail", lambda **kwargs: asked.append(kwargs))
    return asked


def _inconclusive(task, context) -> TaskAwaitingInput:
    with pytest.raises(TaskAwaitingInput) as parked:
        drive(task, context, [OK, event(Verdict.INCONCLUSIVE, "the stable version 1 served 3 requests")])
    return parked.value


def test_an_inconclusive_analysis_can_wait_for_a_person_who_continues(target, hitl):
    task, context = operator(inconclusive="wait_for_approval")
    parked = _inconclusive(task, context)

    [question] = hitl
    assert question["ti_id"] == context["ti"].id
    assert question["options"] == ["Continue", "Repeat the analysis", "Abort"] and question["defaults"] == ["Abort"]
    assert "the stable version 1 served 3 requests" in question["body"] and "**50%**" in question["body"]
    assert parked.method_name == "resume_after_decision"
    assert dt.timedelta(minutes=59) < parked.timeout <= dt.timedelta(minutes=60)
    assert (target.canary, target.percent) == ("2", 50), "the canary keeps its share while a person decides"

    answer = {"chosen_options": ["Continue"], "responded_by_user": {"id": "7", "name": "alice"}, "params_input": {}}
    with pytest.raises(TaskDeferred) as deferred:
        task.resume_after_decision(context, event=answer, **parked.kwargs)
    assert steps_taken(target)[-1] == 100
    result = task.execute_complete(context, event=OK, **deferred.value.kwargs)
    assert result["promoted"]
    assert {"percent": 50, "decision": "Continue", "by": "alice", "at": ""} in result["analyses"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"chosen_options": ["Abort"], "responded_by_user": {"id": "7", "name": "alice"}}, "alice chose Abort"),
        ({"chosen_options": ["Abort"], "responded_by_user": None, "timedout": True}, "the timeout default chose"),
        ({"error": "The Human-in-the-loop response timeout has passed", "error_type": "timeout"}, "no decision"),
    ],
)
def test_an_abort_or_no_answer_rolls_back(target, hitl, answer, reason):
    task, context = operator(inconclusive="wait_for_approval")
    parked = _inconclusive(task, context)
    with pytest.raises(AirflowFailException, match=reason):
        task.resume_after_decision(context, event=answer, **parked.kwargs)
    assert target.names()[-1] == "rollback" and target.canary is None


def test_repeat_judges_the_same_step_again(target, hitl):
    task, context = operator(inconclusive="wait_for_approval")
    parked = _inconclusive(task, context)
    with pytest.raises(TaskDeferred):
        task.resume_after_decision(context, event={"chosen_options": ["Repeat the analysis"]}, **parked.kwargs)
    assert steps_taken(target) == [10, 50, 50]


def test_a_deployment_changed_by_hand_stops_the_rollout_and_touches_nothing(target, smtp_inbox):
    task, context = operator()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    target.rollback("a person used the rollback DAG")  # while the analysis ran
    calls = len(target.calls)
    with pytest.raises(AirflowFailException, match="the deployment changed during the rollout"):
        task.execute_complete(context, event=OK, **deferred.value.kwargs)
    assert len(target.calls) == calls
    assert "interrupted" in smtp_inbox.messages[0][1]["Subject"]


def test_the_rollout_timeout_aborts(target):
    task, context = operator()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    state = {**deferred.value.kwargs["state"], "started": 0}
    with pytest.raises(AirflowFailException, match=re.escape("longer than timeout_minutes (60)")):
        task.execute_complete(context, event=OK, state=state)
    assert target.names()[-1] == "rollback"


def test_a_failed_trigger_rolls_the_canary_back(target):
    task, context = operator()
    with pytest.raises(TaskDeferred):
        task.execute(context)
    with pytest.raises(AirflowFailException, match=re.escape("the canary analysis trigger failed (Trigger timeout)")):
        task.resume_execution("__fail__", {"error": "Trigger timeout"}, context)
    assert target.names()[-1] == "rollback" and target.canary is None


def test_the_first_model_ever_becomes_stable_at_once(target):
    target.stable, target.loaded = None, {}
    task, context = operator()
    result = task.execute(context)
    assert target.calls == [("load", "2", "/models/2"), ("set_traffic", "2", None, 0)]
    assert result["first_model"] and result["promoted"]


def test_a_retry_after_promotion_does_nothing(target):
    target.stable, target.loaded = "2", {"1": "/models/1", "2": "/models/2"}
    task, context = operator()
    assert task.execute(context)["promoted"] and target.calls == []


def test_a_cleared_task_resumes_at_the_current_step(target):
    target.canary, target.percent, target.loaded["2"] = "2", 50, "/models/2"
    task, context = operator()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    assert target.calls == [("set_traffic", "1", "2", 50)], "no reload, no step back to 10%"
    assert deferred.value.kwargs["state"]["step"] == 1


def test_another_rollout_in_progress_is_left_alone(target):
    target.canary, target.percent, target.loaded["3"] = "3", 25, "/models/3"
    task, context = operator()
    with pytest.raises(AirflowFailException, match="version 3 is the canary at 25%"):
        task.execute(context)
    assert target.calls == []


def test_a_first_segment_stops_at_its_last_step_without_promoting(target):
    task, context = operator(steps=[10, 50])
    assert task.promote is False
    result = drive(task, context, [OK, OK])
    assert not result["promoted"] and (target.canary, target.percent) == ("2", 50)
    assert "promote" not in target.names()

    widen, context = operator("canary_rollout_widen", steps=[100])
    result = drive(widen, context, [OK])
    assert result["promoted"] and steps_taken(target) == [10, 50, 100]


def test_a_target_without_metrics_is_refused_before_any_traffic_moves(target, monkeypatch):
    monkeypatch.setattr(FakeTarget, "metrics_url", lambda self: None)
    task, context = operator()
    with pytest.raises(AirflowFailException, match="exposes no serving metrics"):
        task.execute(context)
    assert target.calls == []


def test_steps_must_increase():
    with pytest.raises(ValueError, match="steps must be increasing"):
        operator(steps=[50, 10])


# RollbackDeploymentOperator


def rollback_operator(version: str | None, model_uri: str | None = None):
    with DAG("chicago_taxi_rollback", schedule=None) as dag:
        task = RollbackDeploymentOperator(
            task_id="rollback_traffic",
            serving=SERVING,
            version=version,
            model_uri=model_uri,
            reason="complaints about tips",
            actor="alice",
        )
    ti = FakeTI("rollback_traffic")
    return task, {"ti": ti, "task_instance": ti, "dag": dag, "run_id": ti.run_id}


def test_a_manual_rollback_moves_all_traffic_in_one_call(target):
    target.stable, target.canary, target.percent = "2", "3", 25
    target.loaded = {"1": "/m/1", "2": "/m/2", "3": "/m/3"}
    task, context = rollback_operator("1", "/m/1")
    result = task.execute(context)
    assert target.calls == [("rollback", "complaints about tips", "1")]
    assert (target.stable, target.canary) == ("1", None)
    assert result["previous_stable"] == "2" and result["previous_canary"] == "3" and result["changed"]
    assert result["seconds"] == 0.0002


def test_a_version_that_is_not_loaded_is_loaded_before_the_switch(target):
    task, context = rollback_operator("0", "/m/0")
    task.execute(context)
    assert target.names() == ["load", "rollback"]


def test_rolling_back_to_what_already_serves_is_a_no_op(target):
    task, context = rollback_operator("1")
    assert task.execute(context)["changed"] is False and target.calls == []


def test_without_a_version_the_canary_is_aborted(target):
    target.canary, target.percent, target.loaded["2"] = "2", 50, "/m/2"
    task, context = rollback_operator(None)
    task.execute(context)
    assert target.calls == [("rollback", "complaints about tips", None)] and target.stable == "1"
