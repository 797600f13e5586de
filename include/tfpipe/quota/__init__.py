"""Compute quota: know the quota is there before a stage spends it, share it fairly, hear before it runs out.

- `resources`: requests, capacities, shortages and refusals (cores, memory, GPUs held at once; core- and
  GPU-hours spent per window);
- `providers`: real capacity; the local machine here, Google Cloud in `tfpipe_airflow.hooks.quota`;
- `ledger`: the shared budget and per-pipeline caps, reservations with leases, alert dedupe, usage history,
  on SQLAlchemy Core (SQLite or Postgres), safe under concurrent writers;
- `service`: one check (provider, then ledger), the same for a worker and the triggerer;
- `estimates`: per-stage percentiles of measured usage, for the next run's requests;
- `metrics`: Prometheus textfile export;
- `cli`: `python -m tfpipe.quota status|estimates|import-results|metrics|release --ledger-url URL`.

No Airflow here: the Airflow side (`tfpipe_airflow.{hooks,operators,triggers}.quota`) resolves the ledger's
Airflow connection and adapts these to tasks.
"""

from tfpipe.quota.ledger import Alert, Decision, QuotaLedger, Reservation, UsageRecord, create_ledger_engine
from tfpipe.quota.providers import LocalQuotaProvider, QuotaProvider
from tfpipe.quota.resources import Capacity, Holder, Refusal, Shortage, stage_request
from tfpipe.quota.service import QuotaSpec, attempt

__all__ = [
    "Alert",
    "Capacity",
    "Decision",
    "Holder",
    "LocalQuotaProvider",
    "QuotaLedger",
    "QuotaProvider",
    "QuotaSpec",
    "Refusal",
    "Reservation",
    "Shortage",
    "UsageRecord",
    "attempt",
    "create_ledger_engine",
    "stage_request",
]
