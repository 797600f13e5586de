"""The Airflow side of the monitoring DAG: thin operators around the `monitor` stage.

- MonitoringProbeOperator: what the ML runtime cannot see. The model server through its connection
  (GET /readyz, GET /metrics, made compact by tfpipe.monitoring.service) and Airflow's count of failed
  training runs (the Task SDK). A server that does not answer is a finding, not a task failure.
- SendMonitoringAlertsOperator: the alerts the stage decided to send now (already deduplicated with the
  cool-down, from the window summaries), one message per channel configured (e-mail, Slack, webhook).
- RequestRetrainingOperator: an event on the retraining asset when the stage asked for it; skipped (no
  event) otherwise.
- DetectLandedSpansOperator: an event on the span-landed asset for span folders changed in the window.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from airflow.sdk import Asset, BaseOperator, Context, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from tfpipe.config import AlertsConfig, LocalServingConfig, MonitoringAlertsConfig
from tfpipe.monitoring.service import summarize_metrics


class MonitoringProbeOperator(BaseOperator):
    """Probe the model server and count failed training runs; return small JSON for the monitor stage.

    :param serving: `serving.local` of the pipeline config (fallback address when the connection is undefined).
    :param conn_id: the model server's Airflow connection.
    :param model: the served model name (`serving.model_name`).
    :param training_dag_id: whose failed runs are counted; None: not counted.
    :param timeout: seconds for each HTTP call.
    """

    ui_color = "#e8f4e8"

    def __init__(
        self,
        *,
        serving: LocalServingConfig,
        model: str,
        conn_id: str | None = None,
        training_dag_id: str | None = None,
        timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.serving = serving
        self.model = model
        self.conn_id = conn_id or serving.conn_id
        self.training_dag_id = training_dag_id
        self.timeout = timeout

    def base_url(self) -> str:
        from tfpipe_airflow.hooks.model_server import ModelServerHook

        return ModelServerHook(self.conn_id, fallback=self.serving).base_url

    def probe(self, base_url: str) -> dict[str, Any]:
        found: dict[str, Any] = {
            "url": base_url,
            "probed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        try:
            with httpx.Client(base_url=base_url, timeout=self.timeout) as client:
                ready = client.get("/readyz")
                found["reachable"] = True
                found["ready"] = ready.status_code == 200
                try:
                    body = ready.json()
                except ValueError:
                    body = {}
                found["reason"] = body.get("reason") or f"HTTP {ready.status_code}"
                found["stable"], found["canary"] = body.get("stable"), body.get("canary")
                metrics = client.get("/metrics")
                metrics.raise_for_status()
                found["metrics"] = summarize_metrics(metrics.text, self.model)
        except httpx.HTTPError as exc:
            if "reachable" not in found:
                found.update(reachable=False, ready=False, error=f"{type(exc).__name__}: {exc}")
            else:
                found["metrics_error"] = f"{type(exc).__name__}: {exc}"
        return found

    def failed_training_runs(self, context: Context) -> int | None:
        if not self.training_dag_id:
            return None
        try:
            return int(context["ti"].get_dr_count(dag_id=self.training_dag_id, states=["failed"]))
        except Exception as exc:  # the count is one signal among many: log, do not fail the probe
            self.log.warning("could not count failed runs of %s: %s", self.training_dag_id, exc)
            return None

    def execute(self, context: Context) -> dict[str, Any]:
        found = self.probe(self.base_url())
        found["training"] = {"dag_id": self.training_dag_id, "failed_runs": self.failed_training_runs(context)}
        if not found.get("reachable"):
            self.log.error("the model server at %s does not answer: %s", found["url"], found.get("error"))
        elif not found.get("ready"):
            self.log.error("the model server at %s is not ready: %s", found["url"], found.get("reason"))
        else:
            self.log.info("the model server at %s is ready: %s", found["url"], found.get("reason"))
        return found


def report_link(uri: str, base_url: str | None) -> str:
    """Where a person opens an artifact: under `base_url` (relative to the artifact root) if configured, else
    the artifact viewer behind Airflow's [api] base_url, the Cloud console for gs://, or the URI itself."""
    from tfpipe_airflow.links.artifacts import api_base_path, artifact_root, local_artifact_root, report_url

    if not uri:
        return ""
    if base_url:
        root = artifact_root()
        if root and uri.startswith(root.rstrip("/") + "/"):
            return base_url.rstrip("/") + "/" + uri[len(root.rstrip("/")) + 1 :]
    if uri.startswith("gs://"):
        return report_url(uri, root=None)
    url = report_url(uri, root=local_artifact_root(), base_path=api_base_path())
    if not url:
        return uri
    from airflow.sdk import conf

    api = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    if api.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        parts = urlsplit(api)
        return f"{parts.scheme}://{parts.netloc}{url}"
    return url


def runbook_link(runbook_url: str, anchor_target: str) -> str:
    """`runbook_url` with the alert's section anchor (the alert's `runbook` is `<path>#<anchor>`)."""
    anchor = anchor_target.split("#", 1)[1] if "#" in anchor_target else ""
    return f"{runbook_url.split('#', 1)[0]}#{anchor}" if anchor else runbook_url


class SendMonitoringAlertsOperator(BaseOperator):
    """Send the alerts the monitor stage decided to send now, through every configured channel.

    :param alerts: the stage's `alerts` (templated / XComArg): alert dicts, already deduplicated.
    :param report_uri: the window's report (templated / XComArg).
    """

    template_fields: Sequence[str] = ("alerts", "report_uri", "window")
    ui_color = "#fde2e2"

    def __init__(
        self,
        *,
        alerts: Any,
        report_uri: Any,
        channels: MonitoringAlertsConfig,
        recipients: AlertsConfig,
        pipeline: str,
        window: str = "{{ data_interval_start }} .. {{ data_interval_end }}",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.alerts = alerts
        self.report_uri = report_uri
        self.channels = channels
        self.recipients = recipients
        self.pipeline = pipeline
        self.window = window

    def execute(self, context: Context) -> dict[str, Any]:
        from tfpipe_airflow.notifiers import alert_notifiers, compose

        alerts = self.alerts
        if isinstance(alerts, str):
            alerts = json.loads(alerts) if alerts.strip() else []
        alerts = [a for a in alerts or [] if isinstance(a, Mapping)]
        if not alerts:
            self.log.info("nothing to send: no new alert in this window (or all are in their cool-down)")
            return {"sent": 0, "channels": []}
        report = report_link(str(self.report_uri or ""), self.channels.report_base_url)
        links = {a["key"]: (report, runbook_link(self.channels.runbook_url, a.get("runbook", ""))) for a in alerts}
        message = compose(alerts, pipeline=self.pipeline, window=self.window, report_link=report, links=links)
        notifiers = alert_notifiers(
            message,
            channels=self.channels,
            alerts=self.recipients,
            pipeline=self.pipeline,
            window=self.window,
            report_link=report,
        )
        for line in message.text.splitlines():
            self.log.warning("%s", line)
        if not notifiers:
            self.log.warning(
                "no alert channel is configured (alerts.email, monitoring.alerts.slack_conn_id, webhook_conn_id): "
                "the %d alert(s) above are in this log and the report only",
                len(alerts),
            )
            return {"sent": 0, "channels": []}
        sent, failed = [], []
        for channel, notifier in notifiers:
            try:
                # Called directly, not as a callback: the message is ours, so it is not rendered as a template.
                notifier.notify(context)
                sent.append(channel)
            except Exception as exc:  # try every channel before failing
                self.log.exception("could not send the alerts by %s", channel)
                failed.append(f"{channel}: {exc}")
        if failed:
            raise AirflowException(f"alerts not delivered by {', '.join(failed)} (delivered by {sent or 'none'})")
        self.log.info("%d alert(s) sent by %s", len(alerts), ", ".join(sent))
        return {"sent": len(alerts), "channels": sent}


class RequestRetrainingOperator(BaseOperator):
    """Emit an event on the retraining asset when the monitor stage asked for retraining; else skip.

    :param retrain: the stage's `retrain` (XComArg / templated).
    :param reasons: the stage's `retrain_reasons`.
    :param asset: the retraining asset; must also be in `outlets` (it is added when missing).
    :param landing_uri: the landing area: the event names its newest span (`spans`), the data the training
        run it schedules trains on.
    """

    template_fields: Sequence[str] = ("retrain", "reasons", "report_uri", "landing_uri")
    ui_color = "#fff3cd"

    def __init__(
        self, *, retrain: Any, reasons: Any, report_uri: Any, asset: Asset, landing_uri: str = "", **kwargs: Any
    ) -> None:
        outlets = list(kwargs.pop("outlets", []) or [])
        if asset not in outlets:
            outlets.append(asset)
        super().__init__(outlets=outlets, **kwargs)
        self.retrain = retrain
        self.reasons = reasons
        self.report_uri = report_uri
        self.asset = asset
        self.landing_uri = landing_uri

    def execute(self, context: Context) -> dict[str, Any]:
        retrain = self.retrain in (True, "True", "true", 1)
        if not retrain:
            raise AirflowSkipException("no drift or skew crossed a retraining threshold: no retraining asked for")
        reasons = self.reasons if isinstance(self.reasons, list) else [str(self.reasons)]
        extra = {
            "reasons": reasons,
            "report_uri": str(self.report_uri or ""),
            "window_start": str(context.get("data_interval_start") or ""),
            "window_end": str(context.get("data_interval_end") or ""),
        }
        if self.landing_uri:
            # The span the scheduled training run trains on: the newest data there is, fixed in the event.
            spans = span_folders(self.landing_uri)
            if spans:
                extra["spans"] = [spans[-1]]
        context["outlet_events"][self.asset].extra = extra
        for reason in reasons:
            self.log.warning("retraining requested: %s", reason)
        return extra


def _modified(info: Mapping[str, Any]) -> float | None:
    value = info.get("mtime") or info.get("updated") or info.get("LastModified") or info.get("created")
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.timestamp()
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _landing_root(landing_uri: str) -> ObjectStoragePath:
    return ObjectStoragePath(landing_uri if "://" in landing_uri else f"file://{landing_uri}")


def span_folders(landing_uri: str) -> list[str]:
    """Every span (YYYY-MM) with a folder in the landing area, oldest first."""
    root = _landing_root(landing_uri)
    if not root.is_dir():
        return []
    return sorted(
        folder.name.removeprefix("span=")
        for folder in root.iterdir()
        if folder.name.startswith("span=") and folder.is_dir()
    )


class DetectLandedSpansOperator(BaseOperator):
    """Emit an event on the span-landed asset for span folders with a .csv file changed in the data interval.

    :param landing_uri: the landing area (`data.landing_uri`), local or an object store URI.
    :param asset: the span-landed asset (added to `outlets`).
    """

    template_fields: Sequence[str] = ("landing_uri",)
    ui_color = "#e0f0ff"

    def __init__(self, *, landing_uri: str, asset: Asset, **kwargs: Any) -> None:
        outlets = list(kwargs.pop("outlets", []) or [])
        if asset not in outlets:
            outlets.append(asset)
        super().__init__(outlets=outlets, **kwargs)
        self.landing_uri = landing_uri
        self.asset = asset

    def landed(self, start: dt.datetime, end: dt.datetime) -> list[str]:
        root = _landing_root(self.landing_uri)
        if not root.is_dir():
            return []
        spans = []
        for folder in sorted(root.iterdir(), key=lambda p: p.name):
            if not folder.name.startswith("span=") or not folder.is_dir():
                continue
            for path in folder.iterdir():
                if not path.name.endswith(".csv"):
                    continue
                moment = _modified(path.stat())
                if moment is not None and start.timestamp() <= moment < end.timestamp():
                    spans.append(folder.name.removeprefix("span="))
                    break
        return spans

    def execute(self, context: Context) -> list[str]:
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is None or end is None:
            raise AirflowSkipException("this run has no data interval: no window to look for new spans in")
        spans = self.landed(start, end)
        if not spans:
            raise AirflowSkipException(f"no span landed between {start} and {end}")
        context["outlet_events"][self.asset].extra = {"spans": spans}
        self.log.info("new data landed: spans %s", ", ".join(spans))
        return spans
