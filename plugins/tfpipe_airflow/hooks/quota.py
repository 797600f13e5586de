"""Hooks of the compute quota: the shared ledger's database, and Google Cloud's real quotas.

- `QuotaLedgerHook`: the ledger (tfpipe.quota.ledger) on the database an Airflow connection names: conn
  type `sqlite` (host, or the path of a `sqlite:////abs/path.db` URI) or `postgres`. While the connection
  is undefined and the config names a `sqlite_fallback` file, that file is used, with a warning: the
  embedded default works without setup, and production defines the connection (Postgres).
- `GoogleCloudQuotaHook` (providers-google): Compute Engine regional quotas through `ComputeEngineHook`
  (regions.get: each quota's limit and usage); Vertex AI quotas through Service Usage
  (consumerQuotaMetrics: the effective limit per region) and Cloud Monitoring (the quota's allocation
  usage, `serviceruntime.googleapis.com/quota/allocation/usage`).
- `GoogleCloudQuotaProvider`: those figures as the provider check's capacities (cores, GPUs).

providers-google is imported with this module (about a second): the operators import it when they run,
not when a DAG file is parsed.

The CLI of the ledger in the Airflow runtime, resolving the connection from the config:

    python -m tfpipe_airflow.hooks.quota --config dags/configs/chicago_taxi.yaml status|estimates|...
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException
from sqlalchemy.engine import URL

from tfpipe.config import GcpQuotaConfig, QuotaConfig
from tfpipe.quota.ledger import QuotaLedger
from tfpipe.quota.providers import LocalQuotaProvider, QuotaProvider
from tfpipe.quota.resources import Capacity

log = logging.getLogger(__name__)

_LEDGERS: dict[str, QuotaLedger] = {}
_LEDGERS_LOCK = threading.Lock()


def connection_url(conn: Any) -> str:
    """A SQLAlchemy URL from an Airflow connection of type sqlite or postgres."""
    conn_type = (conn.conn_type or "").lower()
    if conn_type == "sqlite":
        path = conn.host or conn.schema
        if not path:
            raise AirflowException(f"connection {conn.conn_id!r} (sqlite) names no database file")
        return f"sqlite:///{path}"
    if conn_type in ("postgres", "postgresql"):
        return URL.create(
            "postgresql+psycopg2",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or "postgres",
        ).render_as_string(hide_password=False)
    raise AirflowException(f"connection {conn.conn_id!r} is of type {conn_type!r}: the ledger needs sqlite or postgres")


def ledger_for_url(url: str) -> QuotaLedger:
    """One ledger (one engine, one connection pool) per database per process."""
    with _LEDGERS_LOCK:
        ledger = _LEDGERS.get(url)
        if ledger is None:
            ledger = _LEDGERS[url] = QuotaLedger.from_url(url)
        return ledger


class QuotaLedgerHook(BaseHook):
    """The shared quota ledger on the database of an Airflow connection.

    :param conn_id: the ledger's connection (sqlite or postgres).
    :param sqlite_fallback: SQLite file used, with a warning, while the connection is undefined.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "tfpipe_quota_ledger"
    conn_type = "sqlite"
    hook_name = "tfpipe quota ledger"

    def __init__(self, conn_id: str = default_conn_name, sqlite_fallback: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.sqlite_fallback = sqlite_fallback

    def _fallback(self) -> str:
        if not self.sqlite_fallback:
            raise AirflowException(
                f"the quota ledger's connection {self.conn_id!r} is not defined: create it (sqlite or postgres), "
                "or set quota.ledger.sqlite_fallback for a local file"
            )
        self.log.warning(
            "connection %r is not defined: the quota ledger is the local file %s (define the connection so that "
            "every worker shares one ledger)",
            self.conn_id,
            self.sqlite_fallback,
        )
        return f"sqlite:///{self.sqlite_fallback}"

    def get_url(self) -> str:
        try:
            return connection_url(self.get_connection(self.conn_id))
        except AirflowNotFoundException:
            return self._fallback()

    async def aget_url(self) -> str:
        """The same, from the triggerer's event loop."""
        try:
            return connection_url(await self.aget_connection(self.conn_id))
        except AirflowNotFoundException:
            return self._fallback()

    def get_conn(self) -> QuotaLedger:
        return ledger_for_url(self.get_url())

    get_ledger = get_conn

    async def aget_ledger(self) -> QuotaLedger:
        return ledger_for_url(await self.aget_url())

    @classmethod
    def from_config(cls, quota: QuotaConfig) -> QuotaLedgerHook:
        return cls(conn_id=quota.ledger.conn_id, sqlite_fallback=quota.ledger.sqlite_fallback)


# -- Google Cloud --------------------------------------------------------------------------------
VERTEX_AI_SERVICE = "aiplatform.googleapis.com"
VERTEX_TRAINING_CPUS = "aiplatform.googleapis.com/custom_model_training_cpus"
QUOTA_USAGE_METRIC = "serviceruntime.googleapis.com/quota/allocation/usage"
# Accelerator types whose Compute Engine quota metric does not follow NVIDIA_TESLA_X -> NVIDIA_X_GPUS.
_COMPUTE_GPU_METRICS = {"NVIDIA_H100_80GB": "NVIDIA_H100_GPUS", "NVIDIA_H100_MEGA_80GB": "NVIDIA_H100_MEGA_GPUS"}


def compute_gpu_metric(accelerator_type: str) -> str:
    """NVIDIA_TESLA_T4 -> NVIDIA_T4_GPUS (Compute Engine's regional quota metric)."""
    if accelerator_type in _COMPUTE_GPU_METRICS:
        return _COMPUTE_GPU_METRICS[accelerator_type]
    return accelerator_type.replace("NVIDIA_TESLA_", "NVIDIA_") + "_GPUS"


def vertex_gpu_metric(accelerator_type: str) -> str:
    """NVIDIA_TESLA_T4 -> aiplatform.googleapis.com/custom_model_training_nvidia_t4_gpus."""
    stem = accelerator_type.replace("NVIDIA_TESLA_", "NVIDIA_").lower()
    return f"{VERTEX_AI_SERVICE}/custom_model_training_{stem}_gpus"


class GoogleCloudQuotaHook(GoogleBaseHook):
    """Quota limits and usage of a Google Cloud project, through providers-google's credentials.

    :param gcp_conn_id: the Google Cloud connection.
    :param impersonation_chain: service accounts to impersonate, as for every providers-google hook.
    """

    hook_name = "tfpipe Google Cloud quotas"

    def __init__(
        self,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain, **kwargs)

    def get_compute_hook(self) -> Any:
        from airflow.providers.google.cloud.hooks.compute import ComputeEngineHook

        return ComputeEngineHook(gcp_conn_id=self.gcp_conn_id, impersonation_chain=self.impersonation_chain)

    def get_region_quotas(self, project_id: str, region: str) -> dict[str, tuple[float, float]]:
        """Compute Engine's quotas of one region: metric -> (limit, usage), from regions.get."""
        service = self.get_compute_hook().get_conn()
        region_resource = service.regions().get(project=project_id, region=region).execute(num_retries=self.num_retries)
        return {
            quota["metric"]: (float(quota.get("limit", 0)), float(quota.get("usage", 0)))
            for quota in region_resource.get("quotas", [])
        }

    def get_service_usage(self) -> Any:
        from googleapiclient.discovery import build

        return build(
            "serviceusage",
            "v1beta1",
            http=self._authorize(),
            cache_discovery=False,
            client_options=self.get_client_options(),
        )

    def get_consumer_quota_limits(
        self, project_id: str, service: str, metrics: Iterable[str], region: str
    ) -> dict[str, float]:
        """Effective per-region limits of a service's allocation quotas (Service Usage consumerQuotaMetrics);
        a limit of -1 (unlimited) is left out."""
        wanted = set(metrics)
        found: dict[str, float] = {}
        api = self.get_service_usage().services().consumerQuotaMetrics()
        request = api.list(parent=f"projects/{project_id}/services/{service}", view="BASIC")
        while request is not None:
            response = request.execute(num_retries=self.num_retries)
            for metric in response.get("metrics", []):
                if metric.get("metric") not in wanted:
                    continue
                for limit in metric.get("consumerQuotaLimits", []):
                    if limit.get("unit") != "1/{project}/{region}":
                        continue
                    value = _bucket_limit(limit.get("quotaBuckets", []), region)
                    if value is not None and value >= 0:
                        found[metric["metric"]] = value
            request = api.list_next(request, response)
        return found

    def get_metric_client(self) -> Any:
        from airflow.providers.google.common.consts import CLIENT_INFO
        from google.cloud import monitoring_v3

        return monitoring_v3.MetricServiceClient(credentials=self.get_credentials(), client_info=CLIENT_INFO)

    def get_quota_usage(
        self, project_id: str, service: str, metrics: Iterable[str], region: str, lookback_minutes: int = 30
    ) -> dict[str, float]:
        """Current allocation usage of quota metrics in a region (Cloud Monitoring; newest point of each series).
        A metric without a series has no allocation yet: 0."""
        from google.cloud import monitoring_v3

        client = self.get_metric_client()
        now = dt.datetime.now(dt.UTC)
        interval = monitoring_v3.TimeInterval(
            start_time=now - dt.timedelta(minutes=lookback_minutes),
            end_time=now,
        )
        usage: dict[str, float] = {}
        for metric in metrics:
            series = client.list_time_series(
                request={
                    "name": f"projects/{project_id}",
                    "filter": (
                        f'metric.type = "{QUOTA_USAGE_METRIC}" AND resource.type = "consumer_quota" '
                        f'AND resource.labels.service = "{service}" AND metric.labels.quota_metric = "{metric}" '
                        f'AND resource.labels.location = "{region}"'
                    ),
                    "interval": interval,
                    "view": monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
                }
            )
            total = 0.0
            for item in series:
                if item.points:
                    newest = max(item.points, key=lambda point: point.interval.end_time)
                    total += float(newest.value.int64_value or newest.value.double_value or 0)
            usage[metric] = total
        return usage


def _bucket_limit(buckets: list[dict[str, Any]], region: str) -> float | None:
    """The bucket of this region if there is one, else the default (dimension-less) bucket."""
    default = None
    for bucket in buckets:
        dimensions = bucket.get("dimensions") or {}
        limit = bucket.get("effectiveLimit")
        if limit is None:
            continue
        if dimensions.get("region") == region:
            return float(limit)
        if not dimensions:
            default = float(limit)
    return default


class GoogleCloudQuotaProvider:
    """A project's real quotas as capacities: cores and GPUs of Vertex AI custom training, or of Compute
    Engine in one region. Memory has no quota in Google Cloud: not limited here."""

    def __init__(self, config: GcpQuotaConfig, hook: GoogleCloudQuotaHook | None = None) -> None:
        self.config = config
        self.hook = hook or GoogleCloudQuotaHook(
            gcp_conn_id=config.gcp_conn_id, impersonation_chain=config.impersonation_chain
        )
        self.name = f"gcp-{config.service.replace('_', '-')}:{config.project_id}/{config.region}"

    def capacity(self) -> dict[str, Capacity]:
        config = self.config
        if config.service == "compute_engine":
            quotas = self.hook.get_region_quotas(config.project_id, config.region)
            wanted = {"cpu": "CPUS", "gpu": compute_gpu_metric(config.accelerator_type)}
            where = f"Compute Engine quota in {config.region}"
            return {
                resource: Capacity(resource, quotas[metric][0], quotas[metric][1], f"{metric} {where}")
                for resource, metric in wanted.items()
                if metric in quotas
            }
        wanted = {"cpu": VERTEX_TRAINING_CPUS, "gpu": vertex_gpu_metric(config.accelerator_type)}
        limits = self.hook.get_consumer_quota_limits(
            config.project_id, VERTEX_AI_SERVICE, wanted.values(), config.region
        )
        usage = self.hook.get_quota_usage(config.project_id, VERTEX_AI_SERVICE, list(limits), config.region)
        where = f"Vertex AI quota in {config.region}"
        return {
            resource: Capacity(resource, limits[metric], usage.get(metric, 0.0), f"{metric.split('/')[-1]} {where}")
            for resource, metric in wanted.items()
            if metric in limits
        }


def provider_for(quota: QuotaConfig) -> QuotaProvider:
    """The provider the config names: this machine (the embedded default), or a Google Cloud project."""
    if quota.provider == "gcp":
        assert quota.gcp is not None
        return GoogleCloudQuotaProvider(quota.gcp)
    return LocalQuotaProvider()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tfpipe.quota` with the ledger of the config's Airflow connection (run in the Airflow runtime)."""
    from tfpipe.config import load_pipeline_config
    from tfpipe.errors import ConfigError
    from tfpipe.quota import cli

    args = cli.parser().parse_args(argv)
    try:
        config = load_pipeline_config(args.config) if args.config else None
        if args.ledger_url:
            url = args.ledger_url
        elif config is not None and config.quota is not None:
            url = QuotaLedgerHook.from_config(config.quota).get_url()
        else:
            url = QuotaLedgerHook().get_url()
        return cli.run(args, QuotaLedger.from_url(url), config)
    except (ConfigError, AirflowException) as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


__all__ = [
    "GoogleCloudQuotaHook",
    "GoogleCloudQuotaProvider",
    "QuotaLedgerHook",
    "connection_url",
    "ledger_for_url",
    "provider_for",
]
