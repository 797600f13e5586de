"""The shared quota ledger: one budget for every pipeline, a cap per pipeline, reservations with leases.

It lives in a real database (a SQLite file by default, Postgres in production) on SQLAlchemy Core, so
every worker, triggerer and CLI of every pipeline sees the same reservations.

Safe under concurrency: every change runs in one transaction that first takes the ledger's lock, so
"sum what is held, compare with the limits, insert" is never interleaved with another writer's:
- SQLite: the transaction starts with BEGIN IMMEDIATE (the database's write lock, taken up front; a
  second writer waits on the busy timeout instead of failing at commit);
- Postgres: SELECT ... FOR UPDATE on the single row of `tfpipe_quota_lock` (READ COMMITTED: once a
  writer holds the row, its reads see everything committed before it).
A partial unique index (one active reservation per holder) backs this up in the schema itself.

Leases: a reservation is active until it is released or its lease runs out. A granted reservation gets
a lease long enough for its task to start (it may wait for a pool slot or a retry); the running task
renews it every third of `lease_seconds`; a killed task stops renewing, and the next transaction marks
its reservation expired, so it frees itself instead of leaking. Nothing needs a sweeper process.

Holders: the key is dag_id/run_id/task_id/map_index of the guarded task, without the try number, so a
retry finds its own reservation and renews it instead of taking a second one.

Alerts: each transaction recomputes how full the shared budget and the pipeline's cap are; the first
one that sees a resource reach `alert_share` of a limit marks it fired (in the same locked transaction)
and returns an Alert to send, so a crossing sends exactly one alert however many tasks see it. It is
re-armed when use falls back below the share.

Times are Unix seconds from the callers' clocks (workers must keep NTP time, as Airflow itself needs).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from tfpipe.quota.resources import (
    CONCURRENT,
    OVER_TIME,
    RESOURCES,
    Holder,
    Refusal,
    Share,
    Shortage,
    amount,
    clean,
)

metadata = MetaData()

LOCK = Table(
    "tfpipe_quota_lock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("schema_version", Integer, nullable=False),
)
RESERVATIONS = Table(
    "tfpipe_quota_reservations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("holder_key", String(700), nullable=False),
    Column("pipeline", String(200), nullable=False),
    Column("stage", String(200), nullable=False),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("task_id", String(250), nullable=False),
    Column("map_index", Integer, nullable=False),
    Column("resources", JSON, nullable=False),
    Column("state", String(16), nullable=False),  # active | released | expired
    Column("created_at", Float, nullable=False),
    Column("renewed_at", Float, nullable=False),
    Column("lease_expires_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("outcome", String(200)),
    Column("charged", JSON),  # core-/GPU-hours really charged, once it ended
    Column("reuses", Integer, nullable=False),
    Index(
        "tfpipe_quota_one_active_per_holder",
        "holder_key",
        unique=True,
        sqlite_where=text("state = 'active'"),
        postgresql_where=text("state = 'active'"),
    ),
    Index("tfpipe_quota_reservations_state", "state", "ended_at"),
)
LIMITS = Table(
    "tfpipe_quota_limits",
    metadata,
    Column("scope", String(32), primary_key=True),  # shared | pipeline | provider
    Column("subject", String(200), primary_key=True),  # * | <pipeline> | <provider>
    Column("resource", String(32), primary_key=True),
    Column("limit", Float, nullable=False),
    Column("used", Float),  # providers only: their own figure of use
    Column("updated_at", Float, nullable=False),
)
ALERTS = Table(
    "tfpipe_quota_alerts",
    metadata,
    Column("scope", String(32), primary_key=True),
    Column("subject", String(200), primary_key=True),
    Column("resource", String(32), primary_key=True),
    Column("fired", Boolean, nullable=False),
    Column("level", Float, nullable=False),
    Column("changed_at", Float, nullable=False),
    Column("pipeline", String(200)),
)
USAGE = Table(
    "tfpipe_quota_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("record_key", String(900), nullable=False, unique=True),
    Column("pipeline", String(200), nullable=False),
    Column("stage", String(200), nullable=False),
    Column("task_id", String(250)),
    Column("run_id", String(250)),
    Column("map_index", Integer),
    Column("source", String(32), nullable=False),  # airflow | result-file | experiment
    Column("recorded_at", Float, nullable=False),
    Column("wall_seconds", Float),
    Column("cpu_seconds", Float),
    Column("peak_rss_mib", Float),
    Column("cores", Float),
    Index("tfpipe_quota_usage_stage", "pipeline", "stage", "recorded_at"),
)
EVENTS = Table(
    "tfpipe_quota_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("kind", String(16), nullable=False),  # reserve | reuse | release | expire | refuse
    Column("pipeline", String(200), nullable=False),
    Column("holder_key", String(700), nullable=False),
    Column("resources", JSON),
    Column("detail", Text),
    Index("tfpipe_quota_events_kind", "kind", "pipeline"),
)
SCHEMA_VERSION = 1
SHARED = "shared"
PIPELINE = "pipeline"
PROVIDER = "provider"


def create_ledger_engine(url: str, *, busy_timeout_seconds: float = 60.0) -> Engine:
    """An engine for the ledger's database URL; SQLite files get a write lock per transaction (BEGIN IMMEDIATE)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_seconds})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver must not open transactions on its own: we open each one ourselves, IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@dataclass(frozen=True)
class Reservation:
    id: str
    holder_key: str
    pipeline: str
    stage: str
    resources: dict[str, float]
    state: str
    created_at: float
    lease_expires_at: float
    reuses: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Reservation:
        return cls(**{key: value[key] for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Alert:
    """A limit about to be reached (`threshold`), or a request refused (`refusal`)."""

    kind: str
    scope: str  # shared | pipeline | provider | refusal
    subject: str  # * | pipeline name | provider name | the refused task
    resource: str
    pipeline: str  # whose request crossed the share, or was refused
    used: float
    limit: float
    share: float
    holders: tuple[Share, ...] = ()
    detail: str = ""

    @property
    def limit_name(self) -> str:
        if self.scope == SHARED:
            return "the shared budget of all pipelines"
        if self.scope == PIPELINE:
            return f"the cap of pipeline {self.subject}"
        return f"the {self.subject} quota"

    def subject_line(self) -> str:
        if self.kind == "refusal":
            return f"[tfpipe] quota request refused: {self.pipeline} {self.subject} (short of {self.resource})"
        level = self.used / self.limit if self.limit else 1.0
        return (
            f"[tfpipe] quota limit about to be reached: {self.pipeline} took {self.resource} to "
            f"{level:.0%} of {self.limit_name}"
        )

    def text(self) -> str:
        if self.kind == "refusal":
            return self.detail
        lines = [
            f"Pipeline {self.pipeline} took {self.resource} to {amount(self.used, self.resource)} of "
            f"{amount(self.limit, self.resource)} ({self.used / self.limit if self.limit else 1:.0%}) of "
            f"{self.limit_name}; the alert share is {self.share:.0%}. The next requests may wait or fail.",
        ]
        lines += [
            f"  - {share.pipeline} {share.holder}: {amount(share.amount, self.resource)}"
            for share in sorted(self.holders, key=lambda share: -share.amount)
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "holders": [share.__dict__ for share in self.holders]}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Alert:
        fields = {key: value[key] for key in cls.__dataclass_fields__ if key in value}
        fields["holders"] = tuple(Share(**share) for share in value.get("holders", ()))
        return cls(**fields)


@dataclass(frozen=True)
class Decision:
    granted: bool
    reservation: Reservation | None = None
    reused: bool = False
    refusal: Refusal | None = None
    alerts: tuple[Alert, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "granted": self.granted,
            "reservation": self.reservation.to_dict() if self.reservation else None,
            "reused": self.reused,
            "refusal": self.refusal.to_dict() if self.refusal else None,
            "alerts": [alert.to_dict() for alert in self.alerts],
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Decision:
        refusal = value.get("refusal")
        return cls(
            granted=value["granted"],
            reservation=Reservation.from_dict(value["reservation"]) if value.get("reservation") else None,
            reused=value.get("reused", False),
            refusal=_refusal_from_dict(refusal) if refusal else None,
            alerts=tuple(Alert.from_dict(alert) for alert in value.get("alerts", ())),
        )


def _refusal_from_dict(value: Mapping[str, Any]) -> Refusal:
    shortages = tuple(
        Shortage(
            scope=item["scope"],
            resource=item["resource"],
            asked=item["asked"],
            limit=item["limit"],
            used=item["used"],
            holders=tuple(Share(**share) for share in item.get("holders", ())),
            note=item.get("note", ""),
        )
        for item in value.get("shortages", ())
    )
    return Refusal(value["pipeline"], value["holder"], dict(value["asked"]), shortages)


@dataclass(frozen=True)
class Release:
    reservation: Reservation | None
    charged: dict[str, float] = field(default_factory=dict)
    rearmed: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class UsageRecord:
    """What one stage run really used, from its result's `usage` (measured by the stage itself)."""

    pipeline: str
    stage: str
    record_key: str
    wall_seconds: float | None
    cpu_seconds: float | None = None
    peak_rss_mib: float | None = None
    cores: float | None = None
    task_id: str | None = None
    run_id: str | None = None
    map_index: int | None = None
    source: str = "airflow"
    recorded_at: float | None = None


@dataclass
class _Row:
    id: str
    holder_key: str
    pipeline: str
    stage: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    resources: dict[str, float]
    state: str
    created_at: float
    lease_expires_at: float
    reuses: int
    charged: dict[str, float] | None
    ended_at: float | None = None

    def reservation(self) -> Reservation:
        return Reservation(
            id=self.id,
            holder_key=self.holder_key,
            pipeline=self.pipeline,
            stage=self.stage,
            resources=dict(self.resources),
            state=self.state,
            created_at=self.created_at,
            lease_expires_at=self.lease_expires_at,
            reuses=self.reuses,
        )

    def label(self) -> str:
        return Holder(self.dag_id, self.run_id, self.task_id, self.map_index).label()

    def counted(self, resource: str) -> float:
        """What this reservation counts against a limit now: held resources while active, hours once ended."""
        if self.state == "active":
            return float(self.resources.get(resource, 0.0))
        if resource in OVER_TIME:
            return float((self.charged or {}).get(resource, 0.0))
        return 0.0


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _row(mapping: Mapping[str, Any]) -> _Row:
    return _Row(
        id=mapping["id"],
        holder_key=mapping["holder_key"],
        pipeline=mapping["pipeline"],
        stage=mapping["stage"],
        dag_id=mapping["dag_id"],
        run_id=mapping["run_id"],
        task_id=mapping["task_id"],
        map_index=mapping["map_index"],
        resources=_loads(mapping["resources"]) or {},
        state=mapping["state"],
        created_at=mapping["created_at"],
        lease_expires_at=mapping["lease_expires_at"],
        reuses=mapping["reuses"],
        charged=_loads(mapping["charged"]),
        ended_at=mapping["ended_at"],
    )


def held_hours(resources: Mapping[str, float], seconds: float) -> dict[str, float]:
    """Core- and GPU-hours of holding `resources` for `seconds`."""
    hours = max(0.0, seconds) / 3600
    return {
        "cpu_hours": round(resources.get("cpu", 0.0) * hours, 4),
        "gpu_hours": round(resources.get("gpu", 0.0) * hours, 4),
    }


class QuotaLedger:
    """Reservations against a shared budget and per-pipeline caps, in one database."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._ready = False

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], float] = time.time) -> QuotaLedger:
        return cls(create_ledger_engine(url), clock=clock)

    # -- schema and transactions ----------------------------------------------------------------
    def create_tables(self) -> None:
        """Create the ledger's tables if missing; safe when several processes start at once."""
        if self._ready:
            return
        for attempt in range(5):
            try:
                with self.engine.begin() as connection:
                    if self._postgres:  # DDL of concurrent first users must not race (SQLite: BEGIN IMMEDIATE)
                        connection.execute(text("SELECT pg_advisory_xact_lock(7244512301)"))
                    metadata.create_all(connection, checkfirst=True)
                    if connection.execute(select(LOCK.c.id).where(LOCK.c.id == 1)).first() is None:
                        connection.execute(insert(LOCK).values(id=1, schema_version=SCHEMA_VERSION))
                break
            except (IntegrityError, ProgrammingError, OperationalError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self._ready = True

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One locked transaction: no other ledger writer runs until it commits or rolls back."""
        self.create_tables()
        with self.engine.begin() as connection:
            connection.execute(select(LOCK.c.id).where(LOCK.c.id == 1).with_for_update())
            yield connection

    # -- reading --------------------------------------------------------------------------------
    def _active(self, connection: Connection) -> list[_Row]:
        rows = connection.execute(select(RESERVATIONS).where(RESERVATIONS.c.state == "active")).mappings()
        return [_row(row) for row in rows]

    def _held(self, connection: Connection, holder_key: str) -> _Row | None:
        """The holder's active reservation, if it holds one."""
        query = select(RESERVATIONS).where(
            and_(RESERVATIONS.c.holder_key == holder_key, RESERVATIONS.c.state == "active")
        )
        found = connection.execute(query).mappings().first()
        return None if found is None else _row(found)

    def _counted(self, connection: Connection, now: float, window_seconds: float) -> list[_Row]:
        """Active reservations, and those that ended inside the window (their hours still count)."""
        since = now - window_seconds
        query = select(RESERVATIONS).where(or_(RESERVATIONS.c.state == "active", RESERVATIONS.c.ended_at >= since))
        return [_row(row) for row in connection.execute(query).mappings()]

    @staticmethod
    def _used(rows: Iterable[_Row], pipeline: str | None = None) -> dict[str, float]:
        used = dict.fromkeys(RESOURCES, 0.0)
        for row in rows:
            if pipeline is None or row.pipeline == pipeline:
                for resource in RESOURCES:
                    used[resource] += row.counted(resource)
        return used

    @staticmethod
    def _holders(rows: Iterable[_Row], resource: str, pipeline: str | None = None) -> tuple[Share, ...]:
        return tuple(
            Share(row.pipeline, row.label(), round(row.counted(resource), 4), row.lease_expires_at)
            for row in rows
            if (pipeline is None or row.pipeline == pipeline) and row.counted(resource) > 0
        )

    def _expire(self, connection: Connection, now: float) -> list[_Row]:
        """Mark reservations whose lease ran out as expired: their task was killed or lost."""
        query = select(RESERVATIONS).where(
            and_(RESERVATIONS.c.state == "active", RESERVATIONS.c.lease_expires_at < now)
        )
        expired = [_row(row) for row in connection.execute(query).mappings()]
        for row in expired:
            charged = held_hours(row.resources, row.lease_expires_at - row.created_at)
            connection.execute(
                update(RESERVATIONS)
                .where(RESERVATIONS.c.id == row.id)
                .values(state="expired", ended_at=row.lease_expires_at, outcome="lease expired", charged=charged)
            )
            self._event(connection, now, "expire", row.pipeline, row.holder_key, row.resources, "lease expired")
        return expired

    def _event(
        self,
        connection: Connection,
        now: float,
        kind: str,
        pipeline: str,
        holder_key: str,
        resources: Mapping[str, float] | None,
        detail: str = "",
    ) -> None:
        connection.execute(
            insert(EVENTS).values(
                at=now,
                kind=kind,
                pipeline=pipeline,
                holder_key=holder_key,
                resources=dict(resources or {}),
                detail=detail,
            )
        )

    def _set_limits(self, connection: Connection, scope: str, subject: str, limits: Mapping[str, float], now: float):
        connection.execute(delete(LIMITS).where(and_(LIMITS.c.scope == scope, LIMITS.c.subject == subject)))
        for resource, limit in limits.items():
            connection.execute(
                insert(LIMITS).values(scope=scope, subject=subject, resource=resource, limit=limit, updated_at=now)
            )

    # -- alerts ---------------------------------------------------------------------------------
    def _levels(
        self,
        connection: Connection,
        levels: Iterable[tuple[str, str, str, float, float, tuple[Share, ...]]],
        *,
        share: float,
        pipeline: str,
        now: float,
        may_fire: bool,
    ) -> tuple[list[Alert], list[tuple[str, str, str]]]:
        """Fire each (scope, subject, resource) that reached `share` and is armed; re-arm those back below it."""
        fired: list[Alert] = []
        rearmed: list[tuple[str, str, str]] = []
        for scope, subject, resource, used, limit, holders in levels:
            if limit <= 0:
                continue
            level = used / limit
            key = and_(ALERTS.c.scope == scope, ALERTS.c.subject == subject, ALERTS.c.resource == resource)
            current = connection.execute(select(ALERTS.c.fired).where(key)).first()
            above = level >= share - 1e-9
            if current is None:
                if above and may_fire:
                    connection.execute(
                        insert(ALERTS).values(
                            scope=scope,
                            subject=subject,
                            resource=resource,
                            fired=True,
                            level=level,
                            changed_at=now,
                            pipeline=pipeline,
                        )
                    )
                    fired.append(Alert("threshold", scope, subject, resource, pipeline, used, limit, share, holders))
                continue
            if above and not current.fired and may_fire:
                connection.execute(
                    update(ALERTS).where(key).values(fired=True, level=level, changed_at=now, pipeline=pipeline)
                )
                fired.append(Alert("threshold", scope, subject, resource, pipeline, used, limit, share, holders))
            elif not above and current.fired:
                connection.execute(update(ALERTS).where(key).values(fired=False, level=level, changed_at=now))
                rearmed.append((scope, subject, resource))
        return fired, rearmed

    def _ledger_levels(
        self,
        rows: list[_Row],
        pipeline: str,
        budget: Mapping[str, float],
        cap: Mapping[str, float],
    ) -> list[tuple[str, str, str, float, float, tuple[Share, ...]]]:
        everyone, mine = self._used(rows), self._used(rows, pipeline)
        levels = [
            (SHARED, "*", resource, everyone[resource], limit, self._holders(rows, resource))
            for resource, limit in budget.items()
        ]
        levels += [
            (PIPELINE, pipeline, resource, mine[resource], limit, self._holders(rows, resource, pipeline))
            for resource, limit in cap.items()
        ]
        return levels

    # -- the operations -------------------------------------------------------------------------
    def reserve(
        self,
        *,
        holder: Holder,
        pipeline: str,
        stage: str,
        request: Mapping[str, float],
        budget: Mapping[str, float],
        cap: Mapping[str, float],
        lease_seconds: float,
        window_seconds: float = 86400.0,
        alert_share: float = 0.8,
        provider_shortages: Iterable[Shortage] = (),
        record_refusal: bool = True,
    ) -> Decision:
        """Reserve `request` for `holder`, or refuse saying why. A holder that already holds reuses it."""
        request = clean(request)
        budget, cap = clean(budget, limits=True), clean(cap, limits=True)
        provider_shortages = tuple(provider_shortages)
        with self.transaction() as connection:
            now = self.clock()
            self._expire(connection, now)
            row = self._held(connection, holder.key)
            if row is not None:
                lease = max(row.lease_expires_at, now + lease_seconds)
                connection.execute(
                    update(RESERVATIONS)
                    .where(RESERVATIONS.c.id == row.id)
                    .values(lease_expires_at=lease, renewed_at=now, reuses=row.reuses + 1)
                )
                self._event(connection, now, "reuse", pipeline, holder.key, row.resources)
                row.lease_expires_at, row.reuses = lease, row.reuses + 1
                return Decision(True, row.reservation(), reused=True)

            rows = self._counted(connection, now, window_seconds)
            everyone, theirs = self._used(rows), self._used(rows, pipeline)
            shortages: list[Shortage] = []
            for resource, asked in request.items():
                for scope, limits, used, who in (
                    ("shared budget", budget, everyone, None),
                    (f"pipeline cap of {pipeline}", cap, theirs, pipeline),
                ):
                    limit = limits.get(resource)
                    if limit is not None and used[resource] + asked > limit + 1e-9:
                        shortages.append(
                            Shortage(scope, resource, asked, limit, used[resource], self._holders(rows, resource, who))
                        )
            shortages += provider_shortages
            self._set_limits(connection, SHARED, "*", budget, now)
            self._set_limits(connection, PIPELINE, pipeline, cap, now)
            if shortages:
                refusal = Refusal(pipeline, holder.label(), request, tuple(shortages))
                if record_refusal:
                    detail = json.dumps(sorted({shortage.resource for shortage in shortages}))
                    self._event(connection, now, "refuse", pipeline, holder.key, request, detail)
                return Decision(False, refusal=refusal)

            row = _Row(
                id=uuid.uuid4().hex,
                holder_key=holder.key,
                pipeline=pipeline,
                stage=stage,
                dag_id=holder.dag_id,
                run_id=holder.run_id,
                task_id=holder.task_id,
                map_index=holder.map_index,
                resources=request,
                state="active",
                created_at=now,
                lease_expires_at=now + lease_seconds,
                reuses=0,
                charged=None,
            )
            values = {name: value for name, value in asdict(row).items() if name not in ("charged", "ended_at")}
            connection.execute(insert(RESERVATIONS).values(**values, renewed_at=now))
            self._event(connection, now, "reserve", pipeline, holder.key, request)
            rows.append(row)
            alerts, _ = self._levels(
                connection,
                self._ledger_levels(rows, pipeline, budget, cap),
                share=alert_share,
                pipeline=pipeline,
                now=now,
                may_fire=True,
            )
            return Decision(True, row.reservation(), alerts=tuple(alerts))

    def renew(self, holder_key: str, lease_seconds: float, *, exact: bool = False) -> Reservation | None:
        """Extend the holder's lease to at least now + lease_seconds (`exact`: to exactly that, which may shorten
        it, as when a started stage trades its wait-to-start lease for a heartbeat lease). None if it holds
        nothing (released, or the lease already ran out: it must reserve again, the room may be taken)."""
        with self.transaction() as connection:
            now = self.clock()
            self._expire(connection, now)
            row = self._held(connection, holder_key)
            if row is None:
                return None
            wanted = now + lease_seconds
            row.lease_expires_at = wanted if exact else max(row.lease_expires_at, wanted)
            connection.execute(
                update(RESERVATIONS)
                .where(RESERVATIONS.c.id == row.id)
                .values(lease_expires_at=row.lease_expires_at, renewed_at=now)
            )
            return row.reservation()

    def release(
        self,
        holder_key: str,
        *,
        outcome: str,
        usage: Iterable[Mapping[str, float]] | None = None,
        window_seconds: float = 86400.0,
        alert_share: float = 0.8,
    ) -> Release:
        """End the holder's reservation. Core-hours charged: the stages' measured CPU-seconds when given,
        else cores x the time it was held. Idempotent: releasing what is not held does nothing."""
        usage = [dict(item) for item in usage or () if item]
        with self.transaction() as connection:
            now = self.clock()
            self._expire(connection, now)
            row = self._held(connection, holder_key)
            if row is None:
                return Release(None)
            charged = held_hours(row.resources, now - row.created_at)
            if usage and all(item.get("cpu_seconds") is not None for item in usage):
                charged["cpu_hours"] = round(sum(float(item["cpu_seconds"]) for item in usage) / 3600, 4)
            if usage and all(item.get("wall_seconds") is not None for item in usage):
                per_instance = row.resources.get("gpu", 0.0) / max(1, len(usage))
                wall = sum(float(item["wall_seconds"]) for item in usage)
                charged["gpu_hours"] = round(per_instance * wall / 3600, 4)
            connection.execute(
                update(RESERVATIONS)
                .where(RESERVATIONS.c.id == row.id)
                .values(state="released", ended_at=now, outcome=outcome, charged=charged)
            )
            self._event(connection, now, "release", row.pipeline, holder_key, charged, outcome)
            row.state, row.charged, row.ended_at = "released", charged, now
            rows = self._counted(connection, now, window_seconds)
            budget = self._limits(connection, SHARED, "*")
            cap = self._limits(connection, PIPELINE, row.pipeline)
            _, rearmed = self._levels(
                connection,
                self._ledger_levels(rows, row.pipeline, budget, cap),
                share=alert_share,
                pipeline=row.pipeline,
                now=now,
                may_fire=False,
            )
            return Release(row.reservation(), charged, tuple(rearmed))

    def observe_provider(
        self, provider: str, capacity: Mapping[str, Any], *, pipeline: str, alert_share: float = 0.8
    ) -> list[Alert]:
        """Record a provider's limits and use (for metrics), and alert once when one passes the share."""
        with self.transaction() as connection:
            now = self.clock()
            connection.execute(delete(LIMITS).where(and_(LIMITS.c.scope == PROVIDER, LIMITS.c.subject == provider)))
            levels = []
            for resource, known in capacity.items():
                connection.execute(
                    insert(LIMITS).values(
                        scope=PROVIDER,
                        subject=provider,
                        resource=resource,
                        limit=known.limit,
                        used=known.used,
                        updated_at=now,
                    )
                )
                levels.append((PROVIDER, provider, resource, known.used, known.limit, ()))
            alerts, _ = self._levels(connection, levels, share=alert_share, pipeline=pipeline, now=now, may_fire=True)
            return alerts

    def _limits(self, connection: Connection, scope: str, subject: str) -> dict[str, float]:
        query = select(LIMITS.c.resource, LIMITS.c.limit).where(
            and_(LIMITS.c.scope == scope, LIMITS.c.subject == subject)
        )
        return {row.resource: row.limit for row in connection.execute(query)}

    # -- usage history --------------------------------------------------------------------------
    def record_usage(self, records: Iterable[UsageRecord]) -> int:
        """Store measured usage; a record with a key already stored replaces it (a rerun measures anew)."""
        count = 0
        with self.transaction() as connection:
            now = self.clock()
            for record in records:
                values = {**record.__dict__, "recorded_at": record.recorded_at or now}
                connection.execute(delete(USAGE).where(USAGE.c.record_key == record.record_key))
                connection.execute(insert(USAGE).values(**values))
                count += 1
        return count

    def usage_history(self, pipeline: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
        query = select(USAGE).order_by(USAGE.c.recorded_at)
        if pipeline:
            query = query.where(USAGE.c.pipeline == pipeline)
        if stage:
            query = query.where(USAGE.c.stage == stage)
        return self._read(query)

    def _read(self, query: Any) -> list[dict[str, Any]]:
        """The rows of a read-only query, as dicts (no ledger lock: a snapshot is enough)."""
        self.create_tables()
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    # -- status ---------------------------------------------------------------------------------
    def status(self, window_seconds: float = 86400.0) -> dict[str, Any]:
        """Everything the CLI and the metrics export show, read in one transaction."""
        with self.transaction() as connection:
            now = self.clock()
            self._expire(connection, now)
            rows = self._counted(connection, now, window_seconds)
            limits = [dict(row) for row in connection.execute(select(LIMITS)).mappings()]
            alerts = [dict(row) for row in connection.execute(select(ALERTS)).mappings()]
            refusals = connection.execute(
                select(EVENTS.c.pipeline, EVENTS.c.detail).where(EVENTS.c.kind == "refuse")
            ).all()
        pipelines = sorted(
            {row.pipeline for row in rows} | {item["subject"] for item in limits if item["scope"] == PIPELINE}
        )
        refused: dict[tuple[str, str], int] = {}
        for pipeline, detail in refusals:
            for resource in json.loads(detail or "[]"):
                refused[(pipeline, resource)] = refused.get((pipeline, resource), 0) + 1
        return {
            "now": now,
            "window_seconds": window_seconds,
            "active": [row.reservation().to_dict() | {"holder": row.label()} for row in rows if row.state == "active"],
            "used": {"*": self._used(rows), **{pipeline: self._used(rows, pipeline) for pipeline in pipelines}},
            "reserved": {
                "*": self._used([row for row in rows if row.state == "active"]),
                **{
                    pipeline: self._used([row for row in rows if row.state == "active"], pipeline)
                    for pipeline in pipelines
                },
            },
            "limits": limits,
            "alerts": alerts,
            "refusals": [{"pipeline": p, "resource": r, "count": n} for (p, r), n in sorted(refused.items())],
        }

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(EVENTS).order_by(EVENTS.c.id)
        if kind:
            query = query.where(EVENTS.c.kind == kind)
        return self._read(query)


def concurrent_peak(events: Iterable[Mapping[str, Any]], resource: str) -> float:
    """The most of a held resource ever reserved at once, replayed from the ledger's event log (for tests and
    audits: proves nothing was over-committed)."""
    held: dict[str, float] = {}
    peak = 0.0
    for item in events:
        key = item["holder_key"]
        if item["kind"] == "reserve":
            held[key] = float((_loads(item["resources"]) or {}).get(resource, 0.0))
        elif item["kind"] in ("release", "expire"):
            held.pop(key, None)
        peak = max(peak, sum(held.values()))
    return peak


__all__ = [
    "CONCURRENT",
    "Alert",
    "Decision",
    "QuotaLedger",
    "Release",
    "Reservation",
    "UsageRecord",
    "concurrent_peak",
    "create_ledger_engine",
]
