"""CanaryAnalysisTrigger: one canary analysis over a window of live traffic, in the triggerer.

The rollout operator defers to it at each step, holding no worker slot while traffic accumulates. It
scrapes the model server's /metrics at the start of the window and every `poll_seconds`, and yields one
event with the verdict (tfpipe.rollout.analysis) when the window is over, or as soon as the canary has
answered errors on enough traffic (a broken canary is rolled back without waiting out the window).

It never raises: metrics that cannot be read, a server restart (counters reset) or a crash of the
analysis itself yield an Error verdict that says so, which the operator counts against `error_limit`,
apart from model failures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.triggers.base import BaseTrigger, TriggerEvent

from tfpipe.config import CanaryAnalysisConfig
from tfpipe.rollout.analysis import AnalysisResult, Verdict, analyze
from tfpipe.rollout.metrics import MetricsError, Snapshot, parse_metrics
from tfpipe_airflow.hooks.model_server import ascrape_metrics

# The window must be measured for at least this share of its length, or the analysis is an Error.
MIN_COVERAGE = 0.5


class CanaryAnalysisTrigger(BaseTrigger):
    """Analyse `canary_version` against `stable_version` at `canary_percent` over one window.

    :param metrics_url: the model server's Prometheus endpoint.
    :param analysis: `rollout.analysis` (CanaryAnalysisConfig) as a dict.
    :param reference: the stable version's histograms from an earlier window of this rollout, for a
        window in which stable gets too little traffic to compare with (the 100% step).
    :param carry: the rollout's own state, handed back in the event as `carry`. A deferring operator's
        `kwargs` reach `execute_complete` under the triggerer, but `airflow dags test` passes the event alone.
    """

    def __init__(
        self,
        *,
        metrics_url: str,
        model: str,
        canary_version: str,
        stable_version: str,
        canary_percent: float,
        analysis: dict[str, Any],
        reference: dict[str, Any] | None = None,
        scrape_timeout: float = 5.0,
        carry: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.metrics_url = metrics_url
        self.model = model
        self.canary_version = str(canary_version)
        self.stable_version = str(stable_version)
        self.canary_percent = canary_percent
        self.analysis = dict(analysis)
        self.reference = reference
        self.scrape_timeout = scrape_timeout
        self.carry = carry

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "metrics_url": self.metrics_url,
                "model": self.model,
                "canary_version": self.canary_version,
                "stable_version": self.stable_version,
                "canary_percent": self.canary_percent,
                "analysis": self.analysis,
                "reference": self.reference,
                "scrape_timeout": self.scrape_timeout,
                "carry": self.carry,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            result = await self.measure()
        except asyncio.CancelledError:
            raise  # the task was cleared or killed: nothing to report
        except Exception as exc:  # never raise: the operator decides, and a crash is not a model failure
            self.log.exception("the canary analysis crashed")
            result = AnalysisResult.error(f"the canary analysis crashed: {type(exc).__name__}: {exc}")
        self.log.info("canary analysis at %g%%: %s", self.canary_percent, result.summary())
        payload = {**result.to_dict(), "canary_percent": self.canary_percent}
        if self.carry is not None:
            payload["carry"] = self.carry
        yield TriggerEvent(payload)

    async def _scrape(self) -> Snapshot:
        try:
            text = await ascrape_metrics(self.metrics_url, timeout=self.scrape_timeout)
        except httpx.HTTPStatusError as exc:
            raise MetricsError(f"{self.metrics_url} answered {exc.response.status_code}") from None
        except httpx.HTTPError as exc:
            raise MetricsError(f"{self.metrics_url} is unreachable ({type(exc).__name__}: {exc})") from None
        return parse_metrics(text)

    def _judge(self, window: Snapshot, config: CanaryAnalysisConfig, seconds: float) -> AnalysisResult:
        return analyze(
            window,
            model=self.model,
            canary_version=self.canary_version,
            stable_version=self.stable_version,
            config=config,
            reference=self.reference,
            window_seconds=seconds,
        )

    async def measure(self) -> AnalysisResult:
        config = CanaryAnalysisConfig.model_validate(self.analysis)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.window_seconds
        baseline: tuple[float, Snapshot] | None = None
        latest: tuple[float, Snapshot] | None = None
        problems: list[str] = []
        attempts = 0
        while True:
            attempts += 1
            try:
                snapshot: Snapshot | None = await self._scrape()
            except MetricsError as exc:
                snapshot = None
                problems.append(str(exc))
                self.log.warning("metrics scrape %d failed: %s", attempts, exc)
            now = loop.time()
            if snapshot is not None:
                if baseline is None:
                    baseline = (now, snapshot)
                else:
                    try:
                        # Against the previous scrape too: a restart shows there even once the counts grew back.
                        snapshot.delta(latest[1] if latest else baseline[1])
                        window = snapshot.delta(baseline[1])
                    except MetricsError as exc:
                        return AnalysisResult.error(f"the window cannot be measured: {exc}")
                    latest = (now, snapshot)
                    interim = self._judge(window, config, now - baseline[0])
                    if interim.verdict is Verdict.FAILED and interim.measurements.get("error_rate", 0) > (
                        config.max_error_rate
                    ):
                        # Enough traffic already shows the canary answering errors: no need to wait out the
                        # window. Latency and drift are judged on the whole window only: judged again at each
                        # poll on a few requests, their noise would fail healthy canaries.
                        interim.measurements["ended_early"] = True
                        return interim
            if now >= deadline:
                break
            await asyncio.sleep(min(config.poll_seconds, max(deadline - now, 0.0)))

        if baseline is None or latest is None:
            last = problems[-1] if problems else "no scrape succeeded"
            return AnalysisResult.error(
                f"the metrics at {self.metrics_url} could not be read during the {config.window_seconds:g} s window "
                f"({len(problems)} of {attempts} scrapes failed; last: {last})",
                scrape_errors=len(problems),
            )
        covered = latest[0] - baseline[0]
        if covered < MIN_COVERAGE * config.window_seconds:
            return AnalysisResult.error(
                f"only {covered:.1f} s of the {config.window_seconds:g} s window could be measured "
                f"({len(problems)} of {attempts} scrapes failed; last: {problems[-1] if problems else '-'})",
                scrape_errors=len(problems),
            )
        result = self._judge(latest[1].delta(baseline[1]), config, covered)
        if problems:
            result.measurements["scrape_errors"] = len(problems)
            result.checks.append(f"note: {len(problems)} of {attempts} scrapes failed (last: {problems[-1]})")
        return result
