"""Compute quota around a heavy stage: check and reserve before it, keep the lease while it runs, release after.

    check_quota_<stage>  (setup)  ->  <stage>  ->  release_quota_<stage>  (teardown)

- `CheckComputeQuotaOperator` asks the provider (this machine, or the Google Cloud project) and the
  shared ledger for what the stage needs, and reserves it under the stage's key
  (dag_id/run_id/task_id/map_index, no try number: a retry reuses it). Refused, it fails at once with
  what was asked, what is free and who holds the rest, or (deferrable) waits in the triggerer
  (`QuotaAvailableTrigger`), holding no worker slot, until the request fits or the wait times out.
- The stage keeps its lease alive while it runs (a heartbeat thread in its task process, started before
  `execute`): a killed task stops renewing, and its reservation frees itself after `lease_seconds`.
- `ReleaseComputeQuotaOperator`, an Airflow teardown task, releases the reservation whatever the stage's
  outcome (success, failure, upstream failure, marked failed) and records what the stage really used
  (`usage` of its result XCom) in the ledger's history. A teardown, not callbacks, because it also runs
  when the stage never started, Airflow clears it together with its setup when the stage is cleared, and
  its state never decides the DAG run's.

Alerts (SMTP, to `alerts.email`): once when a limit passes `alert_share` (deduped in the ledger, re-armed
below the share), and on each refusal. Metrics: the ledger's state as a Prometheus textfile after every
change (`quota.metrics_path`).

Wire it with `guard(stage, "train", pipeline=..., quota=..., alerts=...)` after the stage's upstream
dependencies are set (the check takes them over, so it reserves only when the stage could start).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from tfpipe.config import AlertsConfig, QuotaConfig, StageQuotaRequest
from tfpipe.quota.ledger import Alert, Decision, QuotaLedger
from tfpipe.quota.resources import Holder, describe, pool_slots, stage_request
from tfpipe.quota.service import QuotaSpec

log = logging.getLogger(__name__)


class QuotaRefused(AirflowFailException):
    """The request does not fit (and the task does not wait, or waited in vain): retrying at once cannot help."""


class QuotaLapsed(AirflowException):
    """The stage's reservation ran out before it started and the room was taken meanwhile; a retry may find room."""


@dataclass(frozen=True)
class GuardedStage:
    """What is checked for one guarded task: everything here is fixed when the DAG file is parsed."""

    pipeline: str
    stage: str  # the name of the request in quota.stages, and of the usage history
    task_id: str  # the guarded task
    quota: QuotaConfig
    request: StageQuotaRequest
    workers: int = 1
    parallel: int = 1
    instances: int = 1
    mapped: bool = False
    lease_seconds: float | None = None  # overrides quota.lease_seconds while the stage runs

    @property
    def running_lease_seconds(self) -> float:
        return self.lease_seconds or self.quota.lease_seconds

    def holder(self, context: Context) -> Holder:
        dag_id = getattr(context.get("dag"), "dag_id", None) or context["ti"].dag_id
        # A mapped stage holds one reservation for all its instances (map_index -1): see `guard`.
        return Holder(dag_id=dag_id, run_id=context["run_id"], task_id=self.task_id, map_index=-1)

    def ledger(self) -> QuotaLedger:
        from tfpipe_airflow.hooks.quota import QuotaLedgerHook

        return QuotaLedgerHook.from_config(self.quota).get_ledger()

    def expected_seconds(self, ledger: QuotaLedger) -> tuple[float, str]:
        """The stage's measured percentile of wall time when there is enough history, else the configured guess."""
        from tfpipe.quota.estimates import expected_seconds

        history = self.quota.history
        measured = expected_seconds(
            ledger,
            self.pipeline,
            self.stage,
            q=history.percentile,
            min_runs=history.min_runs,
            max_runs=history.max_runs,
        )
        if measured is not None:
            return measured, f"p{history.percentile:g} of measured runs"
        return self.request.expected_minutes * 60, "quota.stages expected_minutes (too few measured runs)"

    def spec(self, context: Context, ledger: QuotaLedger, lease_seconds: float) -> tuple[QuotaSpec, str]:
        seconds, basis = self.expected_seconds(ledger)
        request = stage_request(
            self.request.per_worker(),
            expected_seconds=seconds,
            workers=self.workers,
            parallel=self.parallel,
            instances=self.instances,
        )
        spec = QuotaSpec(
            holder=self.holder(context),
            pipeline=self.pipeline,
            stage=self.stage,
            request=request,
            budget=self.quota.budget.as_dict(),
            cap=self.quota.pipeline_cap.as_dict(),
            lease_seconds=lease_seconds,
            window_seconds=self.quota.window_hours * 3600,
            alert_share=self.quota.alert_share,
        )
        return spec, f"{seconds / 60:.1f} min expected ({basis})"

    def attempt(self, ledger: QuotaLedger, spec: QuotaSpec, record_refusal: bool = True) -> Decision:
        from tfpipe.quota.service import attempt
        from tfpipe_airflow.hooks.quota import provider_for

        return attempt(ledger, provider_for(self.quota), spec, record_refusal=record_refusal)


# -- alerts and metrics ----------------------------------------------------------------------------
def send_alerts(alerts: Sequence[Alert], config: AlertsConfig | None, context: Context) -> None:
    """One e-mail for the alerts of one decision (each names the pipeline and the resource). Never raises."""
    if not alerts:
        return
    for alert in alerts:
        log.warning("%s\n%s", alert.subject_line(), alert.text())
    if config is None or not config.email:
        return
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    subject = alerts[0].subject_line() + (f" (and {len(alerts) - 1} more)" if len(alerts) > 1 else "")
    body = "".join(f"<h3>{escape(alert.subject_line())}</h3><pre>{escape(alert.text())}</pre>" for alert in alerts)
    run = context.get("run_id", "")
    notifier = SmtpNotifier(
        from_email=config.from_email,
        to=config.email,
        smtp_conn_id=config.smtp_conn_id,
        subject=subject,
        html_content=body + (f"<p>Run: {escape(str(run))}</p>" if run else ""),
    )
    try:
        # Called directly, not as a callback: the message is ours, so it is not rendered as a template.
        notifier.notify(context)
    except Exception:  # a mail server down must not change the quota decision
        log.exception("could not send the quota alert to %s through connection %s", config.email, config.smtp_conn_id)
    else:
        log.info("quota alert sent to %s", ", ".join(config.email))


def export_metrics(ledger: QuotaLedger, quota: QuotaConfig) -> None:
    """Rewrite the Prometheus textfile from the ledger. Never raises: metrics must not fail a stage."""
    if not quota.metrics_path:
        return
    if "://" in quota.metrics_path:
        log.warning("quota.metrics_path %s is not a local file: metrics not written", quota.metrics_path)
        return
    from tfpipe.quota.metrics import write_textfile

    try:
        write_textfile(ledger, quota.metrics_path, quota.window_hours * 3600)
    except Exception:
        log.exception("could not write the quota metrics to %s", quota.metrics_path)


def _refusal_alert(decision: Decision) -> Alert:
    refusal = decision.refusal
    assert refusal is not None
    first = refusal.shortages[0] if refusal.shortages else None
    return Alert(
        kind="refusal",
        scope="refusal",
        subject=refusal.holder,
        resource=", ".join(refusal.resources) or "quota",
        pipeline=refusal.pipeline,
        used=first.used if first else 0.0,
        limit=first.limit if first else 0.0,
        share=1.0,
        detail=refusal.message(),
    )


# -- the operators -----------------------------------------------------------------------------------
class CheckComputeQuotaOperator(BaseOperator):
    """Reserve what a stage needs before it runs, or fail (or wait) saying why.

    :param guarded: the stage this check is for (see `guard`, which builds it).
    :param deferrable: wait for the quota in the triggerer when refused (default: the stage's or the
        config's `on_refusal` is `defer`); else fail at once.
    :param wait_timeout: how long a deferred check waits (default: the stage's or config's
        `wait_timeout_minutes`).
    :param alerts: who hears about refusals and limits about to be reached.
    """

    ui_color = "#e4f1e1"

    def __init__(
        self,
        *,
        guarded: GuardedStage,
        deferrable: bool | None = None,
        wait_timeout: dt.timedelta | None = None,
        alerts: AlertsConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.guarded = guarded
        behaviour = guarded.request.on_refusal or guarded.quota.on_refusal
        self.deferrable = behaviour == "defer" if deferrable is None else deferrable
        minutes = guarded.request.wait_timeout_minutes or guarded.quota.wait_timeout_minutes
        self.wait_timeout = wait_timeout or dt.timedelta(minutes=minutes)
        self.alerts = alerts
        self._holding: str | None = None

    @property
    def start_within_seconds(self) -> float:
        return self.guarded.quota.start_within_minutes * 60

    def execute(self, context: Context) -> dict[str, Any]:
        guarded = self.guarded
        ledger = guarded.ledger()
        spec, expectation = guarded.spec(context, ledger, self.start_within_seconds)
        self.log.info(
            "asking for %s for %s of %s (%s)", describe(spec.request), guarded.stage, guarded.pipeline, expectation
        )
        self._holding = spec.holder.key
        decision = guarded.attempt(ledger, spec)
        if decision.granted:
            return self._granted(decision, ledger, context)
        self._holding = None
        assert decision.refusal is not None
        message = decision.refusal.message()
        export_metrics(ledger, guarded.quota)
        send_alerts([_refusal_alert(decision)], self.alerts, context)
        if not self.deferrable:
            raise QuotaRefused(message)
        from tfpipe_airflow.triggers.quota import QuotaAvailableTrigger

        deadline = time.time() + self.wait_timeout.total_seconds()
        self.log.warning("%s\nwaiting up to %s for it (deferred: no worker slot is held)", message, self.wait_timeout)
        self.defer(
            trigger=QuotaAvailableTrigger(
                spec=spec.to_dict(),
                quota=guarded.quota.model_dump(mode="json"),
                deadline=deadline,
                poll_seconds=guarded.quota.poll_seconds,
            ),
            method_name="execute_complete",
            # A backstop only: the trigger reports its own timeout, with the message that explains it.
            timeout=self.wait_timeout + dt.timedelta(minutes=5),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        status = event.get("status")
        ledger = self.guarded.ledger()
        if status == "reserved":
            return self._granted(Decision.from_dict(event["decision"]), ledger, context)
        export_metrics(ledger, self.guarded.quota)
        if status == "timeout":
            raise QuotaRefused(f"waited {self.wait_timeout} for compute quota in vain:\n{event.get('message', '')}")
        raise AirflowException(f"waiting for compute quota failed: {event.get('message', event)}")

    def _granted(self, decision: Decision, ledger: QuotaLedger, context: Context) -> dict[str, Any]:
        reservation = decision.reservation
        assert reservation is not None
        self._holding = None  # from here on, the stage's lease and the teardown own it
        verb = "reusing the reservation of an earlier try" if decision.reused else "reserved"
        self.log.info(
            "%s: %s for %s until %s",
            verb,
            describe(reservation.resources),
            reservation.holder_key,
            dt.datetime.fromtimestamp(reservation.lease_expires_at, dt.UTC).isoformat(timespec="seconds"),
        )
        send_alerts(decision.alerts, self.alerts, context)
        export_metrics(ledger, self.guarded.quota)
        return {
            "holder_key": reservation.holder_key,
            "reservation_id": reservation.id,
            "resources": reservation.resources,
            "reused": decision.reused,
        }

    def on_kill(self) -> None:
        """Killed between reserving and handing over to the stage: give the reservation back now."""
        if self._holding is None:
            return
        try:
            self.guarded.ledger().release(self._holding, outcome="check killed")
        except Exception:
            self.log.exception("could not release %s; its lease will free it", self._holding)


class ReleaseComputeQuotaOperator(BaseOperator):
    """Teardown of a guarded stage: record what it really used, release its reservation, re-arm alerts."""

    ui_color = "#f1e4e1"

    def __init__(self, *, guarded: GuardedStage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guarded = guarded

    def _usages(self, context: Context) -> list[dict[str, Any] | None]:
        ti = context["ti"]
        guarded = self.guarded
        if guarded.mapped:
            pulled = ti.xcom_pull(task_ids=guarded.task_id, key="usage", map_indexes=list(range(guarded.instances)))
            values = list(pulled) if isinstance(pulled, list | tuple) else [pulled]
            return values + [None] * (guarded.instances - len(values))
        return [ti.xcom_pull(task_ids=guarded.task_id, key="usage")]

    def execute(self, context: Context) -> dict[str, Any]:
        from tfpipe.quota.estimates import usage_records

        guarded = self.guarded
        ledger = guarded.ledger()
        holder = guarded.holder(context)
        usages = self._usages(context)
        measured = [usage for usage in usages if usage]
        records = usage_records(
            pipeline=guarded.pipeline,
            stage=guarded.stage,
            task_id=guarded.task_id,
            run_id=context["run_id"],
            usages=usages,
            cores=guarded.request.cpu * guarded.workers,
        )
        if records:
            ledger.record_usage(records)
        outcome = (
            "succeeded"
            if len(measured) == len(usages)
            else ("failed" if not measured else f"{len(measured)} of {len(usages)} succeeded")
        )
        released = ledger.release(
            holder.key,
            outcome=outcome,
            usage=measured if len(measured) == len(usages) else None,
            window_seconds=guarded.quota.window_hours * 3600,
            alert_share=guarded.quota.alert_share,
        )
        if released.reservation is None:
            self.log.info("%s held nothing (already released, or its lease ran out)", holder.key)
        else:
            self.log.info("released %s (%s); charged %s", holder.key, outcome, released.charged)
        for measured_usage in measured:
            self.log.info("measured usage of %s: %s", guarded.task_id, measured_usage)
        export_metrics(ledger, guarded.quota)
        return {"holder_key": holder.key, "released": released.reservation is not None, "recorded": len(records)}


# -- the guarded stage keeps its lease ---------------------------------------------------------------
class QuotaLease:
    """Callbacks on the guarded stage that keep its reservation alive while it runs.

    - before `execute` (the stage's pre_execute; for a mapped stage, on_execute_callback): renew the
      reservation, or take it again under the same key if its lease ran out (the task waited too long for a
      pool slot). A plain stage that cannot get it fails (retryable); then a heartbeat thread renews every
      third of `lease_seconds` until the task process ends;
    - on retry: hold it over the retry delay; on success or failure: stop the heartbeat and hand the lease
      to the teardown (or to the next instance of a mapped stage, which may wait for a pool slot).
    """

    def __init__(self, guarded: GuardedStage) -> None:
        self.guarded = guarded
        self._stop: threading.Event | None = None

    def _quota(self) -> QuotaConfig:
        return self.guarded.quota

    def _acquire(self, context: Context) -> tuple[QuotaLedger, str]:
        ledger = self.guarded.ledger()
        holder = self.guarded.holder(context).key
        lease = self.guarded.running_lease_seconds
        # A plain stage trades its wait-to-start lease for a short one that its heartbeat renews; a mapped
        # stage's reservation is shared by its instances, so one of them must not shorten it for the others.
        if ledger.renew(holder, lease, exact=not self.guarded.mapped) is not None:
            return ledger, holder
        spec, _ = self.guarded.spec(context, ledger, lease)
        decision = self.guarded.attempt(ledger, spec)
        if not decision.granted:
            assert decision.refusal is not None
            raise QuotaLapsed(
                "the reservation of this stage ran out before it started, and the room was taken meanwhile:\n"
                + decision.refusal.message()
            )
        log.warning("the reservation of %s had lapsed: reserved again under the same key", holder)
        return ledger, holder

    def before_execute(self, context: Context) -> None:
        ledger, holder = self._acquire(context)
        self._start_heartbeat(ledger, holder)

    def before_mapped_instance(self, context: Context) -> None:
        # A callback cannot fail the task: a lapsed reservation that cannot be taken again is logged loudly.
        try:
            self.before_execute(context)
        except QuotaLapsed:
            log.exception("this instance runs without a quota reservation")

    def _start_heartbeat(self, ledger: QuotaLedger, holder: str) -> None:
        self._stop_heartbeat()
        stop = self._stop = threading.Event()
        lease = self.guarded.running_lease_seconds
        interval = max(0.3, lease / 3)
        exact = not self.guarded.mapped

        def renew() -> None:
            failures = 0
            while not stop.wait(interval):
                try:
                    if ledger.renew(holder, lease, exact=exact) is None:
                        log.warning("%s holds no reservation any more: lease renewal stops", holder)
                        return
                    failures = 0
                except Exception:  # the ledger's database may be away for a moment
                    failures += 1
                    log.exception("could not renew the quota lease of %s (%d in a row)", holder, failures)

        threading.Thread(target=renew, name=f"quota-lease {holder}", daemon=True).start()

    def _stop_heartbeat(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def _extend(self, context: Context, seconds: float) -> None:
        try:
            self.guarded.ledger().renew(self.guarded.holder(context).key, seconds, exact=not self.guarded.mapped)
        except Exception:
            log.exception("could not extend the quota lease")

    def on_retry(self, context: Context) -> None:
        self._stop_heartbeat()
        task = context.get("task")
        delay = getattr(task, "retry_delay", None)
        delay_seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay or 0)
        self._extend(context, delay_seconds + self._quota().start_within_minutes * 60)

    def on_finished(self, context: Context) -> None:
        self._stop_heartbeat()
        quota = self._quota()
        handover = quota.start_within_minutes * 60 if self.guarded.mapped else quota.lease_seconds
        self._extend(context, handover)


def _callbacks(value: Any) -> list[Callable[..., Any]]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _chain_pre_execute(existing: Callable[[Any], Any] | None, first: Callable[[Any], Any]) -> Callable[[Any], Any]:
    if existing is None:
        return first

    def both(context: Any) -> None:
        first(context)
        existing(context)

    return both


def _literal_length(stage: Any) -> int | None:
    """How many instances a mapped task has when it expands over a literal list (known at parse time)."""
    value = getattr(getattr(stage, "expand_input", None), "value", None)
    if isinstance(value, Mapping):
        lengths = {len(item) for item in value.values() if isinstance(item, list | tuple)}
        if len(lengths) == 1:
            return lengths.pop()
    return None


def guard(
    stage: Any,
    stage_name: str,
    *,
    pipeline: str,
    quota: QuotaConfig | None,
    alerts: AlertsConfig | None = None,
    workers: int | None = None,
    instances: int | None = None,
    parallel: int | None = None,
    deferrable: bool | None = None,
    wait_timeout: dt.timedelta | None = None,
    lease: dt.timedelta | None = None,
    assign_pool: bool = True,
) -> tuple[CheckComputeQuotaOperator, ReleaseComputeQuotaOperator] | None:
    """Put a quota check before `stage` and a release after it; return (check, release), or None without quota.

    Call it once the stage's upstream dependencies are set: the check takes them over, so it reserves only
    when the stage could start (and the stage's own `>>` wiring is kept).

    :param stage: the guarded task (a RunMLStageOperator, a mapped one, or any operator).
    :param stage_name: its request in `quota.stages` (validate, tune_trial, train, evaluate, serve, ...).
    :param workers: workers per instance (default: the operator's `workers`, else 1).
    :param instances: instances of a mapped stage (default: the length of its literal expand list).
    :param parallel: instances at once (default: all; pass the pool's size for pooled trials). A mapped
        stage holds one reservation for `parallel` instances, kept until the last one ends.
    :param deferrable: wait for quota instead of failing (default from the config's `on_refusal`).
    :param lease: the running stage's lease, instead of `quota.lease_seconds`. A stage that itself defers
        (the canary rollout) runs no heartbeat while deferred: give it a lease as long as its timeout.
    :param assign_pool: a stage in the default pool moves to `quota.pool`, one slot per core it holds.
    """
    if quota is None:
        return None
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    mapped = isinstance(stage, MappedOperator)
    if workers is None:
        workers = int((stage.partial_kwargs.get("workers") if mapped else getattr(stage, "workers", 1)) or 1)
    if mapped:
        instances = instances or _literal_length(stage)
        if instances is None:
            raise ValueError(f"{stage.task_id}: pass instances= (its expand input is not a literal list)")
    instances = instances or 1
    parallel = min(parallel or instances, instances)
    guarded = GuardedStage(
        pipeline=pipeline,
        stage=stage_name,
        task_id=stage.task_id,
        quota=quota,
        request=quota.request_for(stage_name),
        workers=workers,
        parallel=parallel,
        instances=instances,
        mapped=mapped,
        lease_seconds=lease.total_seconds() if lease is not None else None,
    )
    # A request above the cap or the budget could never be granted: say so when the DAG is parsed.
    peak = stage_request(
        guarded.request.per_worker(), expected_seconds=0, workers=workers, parallel=parallel, instances=instances
    )
    limits = {**quota.budget.as_dict()}
    for name, value in quota.pipeline_cap.as_dict().items():
        limits[name] = min(value, limits.get(name, math.inf))
    too_big = {name: value for name, value in peak.items() if name in limits and value > limits[name] + 1e-9}
    if too_big:
        raise ValueError(
            f"{stage.task_id} would ask for {describe(too_big)}, more than quota.budget/pipeline_cap allow "
            f"({describe({name: limits[name] for name in too_big})}): it could never run"
        )

    group = stage.task_group if stage.task_group is not None and stage.task_group.group_id else None
    common = {"dag": stage.dag, "task_group": group}
    label = stage.task_id.rsplit(".", 1)[-1]
    check = CheckComputeQuotaOperator(
        task_id=f"check_quota_{label}",
        guarded=guarded,
        deferrable=deferrable,
        wait_timeout=wait_timeout,
        alerts=alerts,
        doc_md=f"Reserves {describe(peak)} (and core-hours) for `{stage.task_id}` from the compute quota.",
        **common,
    )
    release = ReleaseComputeQuotaOperator(
        task_id=f"release_quota_{label}",
        guarded=guarded,
        doc_md=f"Records what `{stage.task_id}` used and releases its compute quota.",
        **common,
    )
    upstream = [task for task in stage.upstream_list if task is not check]
    for task in upstream:
        task >> check
    check >> stage >> release
    release.as_teardown(setups=check)

    keeper = QuotaLease(guarded)
    stage.on_retry_callback = [*_callbacks(stage.on_retry_callback), keeper.on_retry]
    stage.on_success_callback = [*_callbacks(stage.on_success_callback), keeper.on_finished]
    stage.on_failure_callback = [*_callbacks(stage.on_failure_callback), keeper.on_finished]
    if mapped:
        stage.on_execute_callback = [*_callbacks(stage.on_execute_callback), keeper.before_mapped_instance]
    else:
        stage._pre_execute_hook = _chain_pre_execute(stage._pre_execute_hook, keeper.before_execute)
    if assign_pool and stage.pool in (None, "default_pool"):
        stage.pool = quota.pool
        stage.pool_slots = pool_slots(stage_request(guarded.request.per_worker(), expected_seconds=0, workers=workers))
    return check, release


__all__ = [
    "CheckComputeQuotaOperator",
    "GuardedStage",
    "QuotaLapsed",
    "QuotaLease",
    "QuotaRefused",
    "ReleaseComputeQuotaOperator",
    "guard",
    "send_alerts",
]
