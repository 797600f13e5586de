"""CanaryRolloutOperator and RollbackDeploymentOperator: moving live traffic between model versions.

A canary rollout (Argo Rollouts' model): the candidate is loaded next to the stable version, then takes
a growing share of the traffic, step by step (`rollout.steps`). At each step the task defers to
CanaryAnalysisTrigger, holding no worker slot, which judges a window of live traffic: Successful,
Failed, Inconclusive or Error. Failures and measurement errors count against their own limits
(`failure_limit`, `error_limit`; errors count consecutively), because a metrics outage is not a model
failure. Past a limit, or on a Failed analysis with `failure_limit: 0`, the rollout aborts: one call
sends all traffic back to stable (which stayed loaded and warm), registry aliases are left as they
are, the alert recipients get an e-mail, and the task fails with the reasons. After the last step
the canary is promoted on the target (it becomes stable at 100%); the DAG's next task makes it the
registry's `champion`.

An Inconclusive analysis (too little traffic, nothing to compare with) aborts, or with
`analysis.inconclusive: wait_for_approval` parks the task in Airflow's human-in-the-loop state
(awaiting input, no worker slot, no trigger) with the options Continue / Repeat the analysis / Abort;
the canary keeps its share meanwhile, and no answer before the rollout's timeout means Abort.

The task is safe to clear or retry: it reads the deployment first. A version that already serves all
traffic is done; a canary of this version resumes at its current step; a canary of another version
(another rollout in progress) is left alone and the task fails saying so. One instance of the task runs
at a time across the DAG's runs (`max_active_tis_per_dag=1`, which counts deferred tasks). A person who
changes the deployment meanwhile (the rollback DAG) stops the rollout: it notices at the next step and
fails without touching anything.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink, Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.sdk.execution_time.xcom import XCom

from tfpipe.config import AlertsConfig, RolloutConfig, ServingConfig
from tfpipe.rollout.analysis import AnalysisResult, Verdict
from tfpipe_airflow.deployment import Deployment, DeploymentTarget, build_target
from tfpipe_airflow.triggers.rollout import CanaryAnalysisTrigger

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

TRIGGER_FAIL = "__fail__"
DEPLOYMENT_URL_KEY = "deployment_url"
ROLLOUT_XCOM_KEY = "rollout"
CONTINUE, REPEAT, ABORT = "Continue", "Repeat the analysis", "Abort"
DECISION_OPTIONS = [CONTINUE, REPEAT, ABORT]
ROLLBACK_ATTEMPTS = 3


class DeploymentLink(BaseOperatorLink):
    """The "Deployment" button: the model server's status page, or the Vertex AI endpoint in the console.

    The URL is saved as XCom before the task first defers (as providers-google's Vertex AI operators do)."""

    name = "Deployment"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = XCom.get_value(ti_key=ti_key, key=DEPLOYMENT_URL_KEY)
        return url if isinstance(url, str) else ""


def _now() -> float:
    return time.time()


def _actor(context: Context) -> str:
    ti = context["ti"]
    return f"airflow:{ti.dag_id}/{ti.run_id}/{ti.task_id}"


def send_mail(alerts: AlertsConfig, subject: str, html: str, context: Context, log: Any) -> None:
    """E-mail the alert recipients through Airflow's SMTP notifier; a mail server that is down is logged,
    never raised (the decision stands and the task log holds everything the mail says)."""
    if not alerts.email:
        log.info("no alert recipients (alerts.email): nothing e-mailed")
        return
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(
        from_email=alerts.from_email,
        to=alerts.email,
        smtp_conn_id=alerts.smtp_conn_id,
        subject=subject,
        html_content=html,
    )
    try:
        notifier.notify(context)
    except Exception:
        log.exception("could not e-mail %s through connection %s", alerts.email, alerts.smtp_conn_id)
    else:
        log.info("e-mail sent to %s: %s", ", ".join(alerts.email), subject)


class CanaryRolloutOperator(BaseOperator):
    """Roll `version` out as a canary next to the stable version, step by step, analysing live traffic.

    :param version: the registry version to roll out (templated; usually register_model's `model_version`).
    :param model_uri: its SavedModel (templated; register_model's `model_uri`).
    :param serving: `serving` of the pipeline config: the target and the served model name.
    :param rollout: `rollout` of the pipeline config: steps, analysis, limits, timeout.
    :param alerts: who hears about an abort or a question.
    :param steps: the steps this task takes (default: all of `rollout.steps`). A DAG that asks a person
        before widening past `rollout.approval_above_percent` splits the steps over two tasks.
    :param promote: promote the canary on the target after the last step (default: when it is 100).
    """

    template_fields = ("version", "model_uri")
    ui_color = "#d9f0d3"
    operator_extra_links = (DeploymentLink(),)

    def __init__(
        self,
        *,
        version: str,
        model_uri: str,
        serving: ServingConfig,
        rollout: RolloutConfig,
        alerts: AlertsConfig | None = None,
        steps: Sequence[int] | None = None,
        promote: bool | None = None,
        **kwargs: Any,
    ) -> None:
        # One rollout of a task at a time across runs, deferred and awaiting-input ones included: two runs
        # reading "no canary" at once would otherwise both move traffic.
        kwargs.setdefault("max_active_tis_per_dag", 1)
        super().__init__(**kwargs)
        self.version = version
        self.model_uri = model_uri
        self.serving = serving
        self.rollout = rollout
        self.alerts = alerts or AlertsConfig()
        self.steps = list(steps if steps is not None else rollout.steps)
        if not self.steps or any(not 0 < step <= 100 for step in self.steps) or self.steps != sorted(set(self.steps)):
            raise ValueError(f"steps must be increasing percentages in (0, 100], got {self.steps}")
        self.promote = self.steps[-1] == 100 if promote is None else promote
        if self.promote and self.steps[-1] != 100:
            raise ValueError("only a rollout whose last step is 100 can promote the canary")

    # -- plumbing -----------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self.serving.model_name

    def _target(self, context: Context) -> DeploymentTarget:
        return build_target(self.serving, actor=_actor(context))

    def _what(self) -> str:
        return f"{self.model} version {self.version}"

    def _log_deployment(self, context: Context, deployment: Deployment, when: str) -> None:
        self.log.info("deployment %s: %s", when, deployment.describe())
        context["ti"].xcom_push(key="deployment", value=deployment.to_dict())

    # -- start --------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        self.version = str(self.version)
        if not self.version or self.version == "None" or not self.model_uri:
            raise AirflowFailException(f"nothing to roll out: version {self.version!r}, model_uri {self.model_uri!r}")
        target = self._target(context)
        url = target.url()
        if url:
            context["ti"].xcom_push(key=DEPLOYMENT_URL_KEY, value=url)
        current = target.deployment()
        self._log_deployment(context, current, "before the rollout")

        if current.stable == self.version and current.canary is None:
            self.log.info("%s already serves all traffic: nothing to do (a retry after promotion?)", self._what())
            return self._result(current, previous_stable=None, history=[], promoted=self.promote)
        if current.canary is not None and current.canary != self.version:
            raise AirflowFailException(
                f"version {current.canary} is the canary at {current.canary_percent:g}% (another rollout in "
                f"progress?): {self._what()} is not rolled out. Let that rollout finish, or roll it back with the "
                f"{self.dag_id.rsplit('_', 1)[0]}_rollback DAG, then clear this task."
            )
        if current.stable is None:
            return self._first_model(context, target)

        metrics_url = target.metrics_url()
        if metrics_url is None:
            raise AirflowFailException(
                f"the {target.kind} target exposes no serving metrics for the canary analysis: refusing to move "
                "traffic without being able to judge it"
            )
        if self.version not in current.loaded:
            self.log.info("loading %s from %s (no traffic yet)", self._what(), self.model_uri)
            target.load(self.version, self.model_uri)
        step = 0
        if current.canary == self.version and current.canary_percent > 0:
            # A retried or cleared task: pick the rollout up where the traffic is, and judge that step again.
            step = next((i for i, s in enumerate(self.steps) if s >= current.canary_percent), len(self.steps) - 1)
            self.log.info(
                "%s is already the canary at %g%%: resuming at step %d%%",
                self._what(),
                current.canary_percent,
                self.steps[step],
            )
        state = {
            "stable": current.stable,
            "step": step,
            "failures": 0,
            "errors": 0,
            "started": _now(),
            "reference": None,
            "history": [],
        }
        return self._run_step(context, target, state)

    def _first_model(self, context: Context, target: DeploymentTarget) -> dict[str, Any]:
        self.log.warning(
            "nothing serves %s yet: %s becomes stable at 100%% at once. There is nothing to compare a canary "
            "against, so no analysis is made.",
            self.model,
            self._what(),
        )
        target.load(self.version, self.model_uri)
        deployment = target.set_traffic(self.version, None, 0)
        self._log_deployment(context, deployment, "after deploying the first model")
        return self._result(deployment, previous_stable=None, history=[], promoted=True, first_model=True)

    # -- steps --------------------------------------------------------------------------------------

    def _run_step(self, context: Context, target: DeploymentTarget, state: dict[str, Any]) -> Any:
        percent = self.steps[state["step"]]
        deployment = target.set_traffic(state["stable"], self.version, percent)
        self._log_deployment(context, deployment, f"at step {percent}%")
        metrics_url = target.metrics_url()
        assert metrics_url is not None
        analysis = self.rollout.analysis
        self.log.info(
            "analysing %g s of live traffic at %d%% (polling every %g s) against stable version %s",
            analysis.window_seconds,
            percent,
            analysis.poll_seconds,
            state["stable"],
        )
        self.defer(
            trigger=CanaryAnalysisTrigger(
                metrics_url=metrics_url,
                model=self.model,
                canary_version=self.version,
                stable_version=state["stable"],
                canary_percent=percent,
                analysis=analysis.model_dump(mode="json"),
                reference=state.get("reference"),
                carry=state,
            ),
            method_name="execute_complete",
            kwargs={"state": state},
        )

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        if next_method == TRIGGER_FAIL:
            # The trigger itself failed (triggerer lost, timeout): the canary must not keep its share unjudged.
            error = (next_kwargs or {}).get("error", "unknown")
            return self._abort_unknown_state(context, f"the canary analysis trigger failed ({error})")
        return super().resume_execution(next_method, next_kwargs, context)

    def execute_complete(
        self, context: Context, event: Mapping[str, Any] | None = None, state: dict[str, Any] | None = None
    ) -> Any:
        self.version = str(self.version)
        if state is None:
            state = (event or {}).get("carry")
        if state is None:
            return self._abort_unknown_state(context, "the canary analysis came back without the rollout's state")
        result = AnalysisResult.from_dict(event or {})
        percent = self.steps[state["step"]]
        self.log.info("analysis at %d%%: %s", percent, result.verdict.value)
        for check in result.checks:
            self.log.info("  %s", check)
        state["history"].append(
            {"percent": percent, "verdict": result.verdict.value, "reasons": result.reasons, **result.measurements}
        )
        if result.reference:
            state["reference"] = result.reference
        target = self._target(context)
        self._check_unchanged(context, target, state, percent)
        if _now() - state["started"] > self.rollout.timeout_minutes * 60:
            return self._abort(
                context,
                target,
                state,
                [f"the rollout took longer than timeout_minutes ({self.rollout.timeout_minutes:g})"],
            )
        limits = self.rollout.analysis
        if result.verdict is Verdict.SUCCESSFUL:
            state["errors"] = 0
            return self._next_step(context, target, state)
        if result.verdict is Verdict.FAILED:
            state["failures"] += 1
            state["errors"] = 0
            if state["failures"] > limits.failure_limit:
                reasons = result.reasons
                if limits.failure_limit:
                    reasons = [
                        *reasons,
                        f"{state['failures']} failed analyses, more than failure_limit {limits.failure_limit}",
                    ]
                return self._abort(context, target, state, reasons)
            self.log.warning(
                "failed analysis %d of the %d tolerated (failure_limit): analysing %d%% again",
                state["failures"],
                limits.failure_limit,
                percent,
            )
            return self._run_step(context, target, state)
        if result.verdict is Verdict.ERROR:
            state["errors"] += 1
            if state["errors"] > limits.error_limit:
                return self._abort(
                    context,
                    target,
                    state,
                    [
                        *result.reasons,
                        f"{state['errors']} consecutive analyses could not measure the canary, more than error_limit "
                        f"{limits.error_limit} (a measurement problem, not a model failure: the canary could not "
                        "be judged)",
                    ],
                )
            self.log.warning(
                "measurement error %d of the %d tolerated in a row (error_limit): analysing %d%% again",
                state["errors"],
                limits.error_limit,
                percent,
            )
            return self._run_step(context, target, state)
        # Inconclusive
        state["errors"] = 0
        if limits.inconclusive == "fail":
            return self._abort(context, target, state, [f"inconclusive analysis: {r}" for r in result.reasons])
        return self._ask(context, state, result)

    def _next_step(self, context: Context, target: DeploymentTarget, state: dict[str, Any]) -> Any:
        state["step"] += 1
        if state["step"] < len(self.steps):
            return self._run_step(context, target, state)
        return self._finish(context, target, state)

    def _check_unchanged(self, context: Context, target: DeploymentTarget, state: dict[str, Any], percent: int) -> None:
        """Stop, touching nothing, if someone changed the deployment while the rollout waited."""
        current = target.deployment()
        if (
            current.canary == self.version
            and current.stable == state["stable"]
            and abs(current.canary_percent - percent) < 0.01
        ):
            return
        self._log_deployment(context, current, "found after the analysis")
        message = (
            f"the deployment changed during the rollout of {self._what()}: expected stable {state['stable']} and the "
            f"canary at {percent}%, found {current.describe()}. Someone rolled back or changed traffic by hand; "
            "the rollout stops and leaves the deployment as it is."
        )
        self._record(context, state, "interrupted", [message])
        send_mail(
            self.alerts,
            f"[tfpipe] canary rollout of {self._what()} interrupted",
            f"<p>{escape(message)}</p>",
            context,
            self.log,
        )
        raise AirflowFailException(message)

    # -- a person decides ---------------------------------------------------------------------------

    def _ask(self, context: Context, state: dict[str, Any], result: AnalysisResult) -> Any:
        """Park the task in Airflow's awaiting-input state (human-in-the-loop) until a person decides."""
        from airflow.sdk.exceptions import TaskAwaitingInput
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        percent = self.steps[state["step"]]
        remaining = max(self.rollout.timeout_minutes * 60 - (_now() - state["started"]), 60.0)
        reasons = "\n".join(f"- {reason}" for reason in result.reasons)
        upsert_hitl_detail(
            ti_id=context["task_instance"].id,
            options=DECISION_OPTIONS,
            subject=f"Canary rollout of {self._what()}: an analysis was inconclusive. Continue or abort?",
            body=(
                f"The analysis at **{percent}%** (this question's first asking in this task try) was inconclusive:"
                f"\n\n{reasons}\n\n**{CONTINUE}** widens the canary to the next step (or promotes it after the "
                f"last), **{REPEAT}** judges this step again, **{ABORT}** sends all traffic back to stable version "
                f"{state['stable']}. The canary keeps its {percent}% meanwhile; no answer by the rollout's timeout "
                "means Abort. If this is asked again in the same try, the latest reasons are in the task log and "
                "the e-mail."
            ),
            defaults=[ABORT],
            multiple=False,
            params={},
        )
        ask_url = self._required_actions_url(context)
        self.log.warning(
            "inconclusive at %d%%: waiting for a person (Required actions%s) for up to %.0f minutes",
            percent,
            f": {ask_url}" if ask_url else "",
            remaining / 60,
        )
        send_mail(
            self.alerts,
            f"[tfpipe] canary rollout of {self._what()} needs a decision",
            f"<p>The canary analysis at {percent}% was inconclusive:</p><ul>"
            + "".join(f"<li>{escape(reason)}</li>" for reason in result.reasons)
            + "</ul>"
            + (f'<p>Decide here: <a href="{escape(ask_url)}">{escape(ask_url)}</a></p>' if ask_url else ""),
            context,
            self.log,
        )
        raise TaskAwaitingInput(
            method_name="resume_after_decision",
            kwargs={"state": state},
            timeout=dt.timedelta(seconds=remaining),
        )

    def _required_actions_url(self, context: Context) -> str:
        base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        ti = context["ti"]
        return f"{base}/dags/{ti.dag_id}/runs/{ti.run_id}/tasks/{ti.task_id}/required_actions" if base else ""

    def resume_after_decision(self, context: Context, event: Mapping[str, Any], state: dict[str, Any]) -> Any:
        self.version = str(self.version)
        target = self._target(context)
        percent = self.steps[state["step"]]
        if "error" in event:
            return self._abort(context, target, state, [f"no decision on the inconclusive analysis: {event['error']}"])
        chosen = (event.get("chosen_options") or [ABORT])[0]
        user = event.get("responded_by_user") or {}
        who = user.get("name") or user.get("id") or ("the timeout default" if event.get("timedout") else "unknown")
        state["history"].append(
            {"percent": percent, "decision": chosen, "by": who, "at": str(event.get("responded_at") or "")}
        )
        self.log.info("decision on the inconclusive analysis at %d%%: %s (by %s)", percent, chosen, who)
        self._check_unchanged(context, target, state, percent)
        if chosen == CONTINUE:
            return self._next_step(context, target, state)
        if chosen == REPEAT:
            return self._run_step(context, target, state)
        return self._abort(
            context, target, state, [f"{who} chose {ABORT} after an inconclusive analysis at {percent}%"]
        )

    # -- endings ------------------------------------------------------------------------------------

    def _finish(self, context: Context, target: DeploymentTarget, state: dict[str, Any]) -> dict[str, Any]:
        if not self.promote:
            deployment = target.deployment()
            self.log.info("steps %s passed; the canary stays at %d%% for the next task", self.steps, self.steps[-1])
            self._record(context, state, "steps passed", [])
            return self._result(deployment, state["stable"], state["history"], promoted=False)
        deployment = target.promote()
        self._log_deployment(context, deployment, "after promotion")
        if deployment.stable != self.version:
            raise AirflowException(f"promotion did not make {self._what()} stable: {deployment.describe()}")
        # Keep the version that served before (an instant rollback target) and unload older ones.
        try:
            unloaded = target.retire({self.version, state["stable"]})
        except Exception:
            self.log.exception("could not unload versions that no longer serve (they use memory, nothing else)")
        else:
            if unloaded:
                self.log.info("unloaded versions that no longer serve: %s", ", ".join(unloaded))
        self._record(context, state, "promoted", [])
        return self._result(deployment, state["stable"], state["history"], promoted=True)

    def _rollback(self, target: DeploymentTarget, reason: str) -> Any:
        """One call; repeated a few times only if the target cannot be reached."""
        for attempt in range(1, ROLLBACK_ATTEMPTS + 1):
            try:
                return target.rollback(reason)
            except AirflowFailException:
                raise
            except Exception:
                if attempt == ROLLBACK_ATTEMPTS:
                    raise
                self.log.exception("rollback attempt %d failed; trying again", attempt)
                time.sleep(1)
        raise AssertionError("unreachable")

    def _abort(self, context: Context, target: DeploymentTarget, state: dict[str, Any], reasons: list[str]) -> Any:
        percent = self.steps[min(state["step"], len(self.steps) - 1)]
        decided = time.perf_counter()
        summary = "; ".join(reasons)
        self.log.error("ABORT: the canary rollout of %s stops at %d%%: %s", self._what(), percent, summary)
        try:
            rolled = self._rollback(target, f"canary {self.version} aborted at {percent}%: {summary}"[:1000])
        except Exception as exc:
            message = (
                f"ROLLBACK FAILED for the canary {self._what()} at {percent}% ({exc}); it may still take traffic: "
                f"roll back with the rollback DAG. The rollout was aborted because: {summary}"
            )
            self._notify_abort(context, reasons, percent, None, message)
            raise AirflowFailException(message) from exc
        to_zero = time.perf_counter() - decided
        self._log_deployment(context, rolled.deployment, "after the rollback")
        self.log.info(
            "rolled back: canary at 0%% %.3f s after the decision (target reported %s s, call round trip %.3f s)",
            to_zero,
            "n/a" if rolled.seconds is None else f"{rolled.seconds:.4f}",
            rolled.round_trip_seconds,
        )
        rollback = {
            "seconds": rolled.seconds,
            "round_trip_seconds": rolled.round_trip_seconds,
            "decision_to_zero_seconds": to_zero,
            "deployment": rolled.deployment.to_dict(),
        }
        self._record(context, state, "rolled back", reasons, rollback=rollback)
        message = (
            f"canary rollout of {self._what()} aborted at {percent}% and rolled back (all traffic to stable version "
            f"{rolled.deployment.stable} in {to_zero:.3f} s; registry aliases unchanged). Why: {summary}"
        )
        self._notify_abort(context, reasons, percent, rolled.deployment, message)
        raise AirflowFailException(message)

    def _abort_unknown_state(self, context: Context, why: str) -> Any:
        self.version = str(self.version)
        target = self._target(context)
        current = target.deployment()
        state = {"stable": current.stable, "step": 0, "failures": 0, "errors": 0, "started": _now(), "history": []}
        if current.canary != self.version or current.canary_percent <= 0:
            message = f"{why}; {self._what()} takes no traffic ({current.describe()}): nothing to roll back"
            self._record(context, state, "interrupted", [message])
            raise AirflowFailException(message)
        state["step"] = next((i for i, s in enumerate(self.steps) if s >= current.canary_percent), len(self.steps) - 1)
        return self._abort(context, target, state, [why])

    def _notify_abort(
        self, context: Context, reasons: list[str], percent: int, deployment: Deployment | None, message: str
    ) -> None:
        ti = context["ti"]
        items = "".join(f"<li>{escape(reason)}</li>" for reason in reasons)
        send_mail(
            self.alerts,
            f"[tfpipe] {ti.dag_id} {ti.run_id}: canary {self._what()} ROLLED BACK at {percent}%",
            f"<p>{escape(message)}</p><p>Reasons:</p><ul>{items}</ul>"
            + (f"<p>Deployment now: {escape(deployment.describe())}</p>" if deployment else ""),
            context,
            self.log,
        )

    def _record(self, context: Context, state: dict[str, Any], outcome: str, reasons: list[str], **extra: Any) -> None:
        record = {
            "outcome": outcome,
            "version": self.version,
            "stable": state.get("stable"),
            "steps": self.steps,
            "reasons": reasons,
            "analyses": state.get("history", []),
            **extra,
        }
        context["ti"].xcom_push(key=ROLLOUT_XCOM_KEY, value=json.loads(json.dumps(record, default=str)))

    def _result(
        self,
        deployment: Deployment,
        previous_stable: str | None,
        history: list[dict[str, Any]],
        *,
        promoted: bool,
        first_model: bool = False,
    ) -> dict[str, Any]:
        return {
            "version": self.version,
            "model_uri": self.model_uri,
            "previous_stable": previous_stable,
            "promoted": promoted,
            "first_model": first_model,
            "steps": self.steps,
            "analyses": json.loads(json.dumps(history, default=str)),
            "deployment": deployment.to_dict(),
        }


class RollbackDeploymentOperator(BaseOperator):
    """Send all traffic to `version` at once (a person's rollback), loading it first if it is not loaded.

    With `version` None it aborts whatever canary serves: all traffic back to the current stable version.
    Retrying is safe: a version that already serves everything is left as it is.

    :param version: the version to serve (templated; e.g. the rollback-target stage's `version`).
    :param model_uri: its SavedModel, to load it if the target does not have it (templated).
    :param reason: why (templated), sent to the target with the rollback and logged.
    :param actor: who (templated), sent to the target as the change's author.
    """

    template_fields = ("version", "model_uri", "reason", "actor")
    ui_color = "#f6d5d5"
    operator_extra_links = (DeploymentLink(),)

    def __init__(
        self,
        *,
        serving: ServingConfig,
        reason: str,
        version: str | None = None,
        model_uri: str | None = None,
        actor: str | None = None,
        alerts: AlertsConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.serving = serving
        self.version = version
        self.model_uri = model_uri
        self.reason = reason
        self.actor = actor
        self.alerts = alerts or AlertsConfig()

    def execute(self, context: Context) -> dict[str, Any]:
        if not str(self.reason or "").strip():
            raise AirflowFailException("a rollback needs a reason")
        version = str(self.version) if self.version not in (None, "", "None") else None
        target = build_target(self.serving, actor=self.actor or _actor(context))
        url = target.url()
        if url:
            context["ti"].xcom_push(key=DEPLOYMENT_URL_KEY, value=url)
        before = target.deployment()
        self.log.info("deployment before the rollback: %s", before.describe())
        if version is None and before.canary is None:
            self.log.info("no canary serves: nothing to abort")
            return self._result(before, before, None, None, changed=False)
        if version is not None and before.stable == version and before.canary is None:
            self.log.info("version %s already serves all traffic: nothing to do", version)
            return self._result(before, before, None, None, changed=False)
        if version is not None and version not in before.loaded:
            if not self.model_uri:
                raise AirflowFailException(f"version {version} is not loaded and no model_uri was given to load it")
            self.log.info("loading version %s from %s before moving traffic (no traffic yet)", version, self.model_uri)
            target.load(version, self.model_uri)
        self.log.info(
            "rolling back %s: all traffic to version %s at once (by %s; reason: %s)",
            self.serving.model_name,
            version or before.stable,
            self.actor or "unknown",
            self.reason,
        )
        result = target.rollback(self.reason, stable=version)
        after = result.deployment
        self.log.info(
            "all traffic on version %s: the target took %s s, round trip %.3f s. Deployment now: %s",
            after.stable,
            "n/a" if result.seconds is None else f"{result.seconds:.4f}",
            result.round_trip_seconds,
            after.describe(),
        )
        expected = version or before.stable
        if after.stable != expected or (after.canary is not None and after.canary_percent > 0):
            raise AirflowException(f"after the rollback the deployment is {after.describe()}, not {expected} at 100%")
        return self._result(before, after, result.seconds, result.round_trip_seconds, changed=True)

    def _result(
        self,
        before: Deployment,
        after: Deployment,
        seconds: float | None,
        round_trip: float | None,
        *,
        changed: bool,
    ) -> dict[str, Any]:
        return {
            "version": after.stable,
            "previous_stable": before.stable,
            "previous_canary": before.canary,
            "changed": changed,
            "seconds": seconds,
            "round_trip_seconds": round_trip,
            "deployment": after.to_dict(),
        }


def widening_approval_record(response: Mapping[str, Any] | None, above_percent: int) -> str:
    """A person's answer to widening the canary past `above_percent`, as the register stage's --approval
    JSON. Its keys are prefixed, so it sits next to the approval before the first step, not over it."""
    prefix = f"widen_above_{above_percent}."
    if not response:
        return json.dumps({prefix + "decision": "none"})
    user = response.get("responded_by_user") or {}
    chosen = response.get("chosen_options") or []
    return json.dumps(
        {
            prefix + "decision": chosen[0] if chosen else "none",
            prefix + "approver": user.get("name") or user.get("id") or "timeout default",
            prefix + "approver_id": user.get("id"),
            prefix + "approved_at": str(response.get("responded_at") or ""),
        },
        sort_keys=True,
    )


ROLLOUT_MACROS = {"tfpipe_widening_approval": widening_approval_record}
