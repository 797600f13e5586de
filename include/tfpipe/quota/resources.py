"""What a stage asks for, what it really used, and what a provider or the ledger has free.

Five resources, each a plain float so that requests, limits and sums compare directly:

- held at once (a reservation holds them until it is released or its lease runs out):
  `cpu` (cores), `memory_gib`, `gpu` (accelerators);
- spent over time, against a budget per rolling window (a day by default):
  `cpu_hours` (core-hours) and `gpu_hours` (accelerator-hours).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CONCURRENT = ("cpu", "memory_gib", "gpu")
OVER_TIME = ("cpu_hours", "gpu_hours")
RESOURCES = CONCURRENT + OVER_TIME

UNITS = {"cpu": "cores", "memory_gib": "GiB", "gpu": "GPUs", "cpu_hours": "core-hours", "gpu_hours": "GPU-hours"}


def amount(value: float, resource: str) -> str:
    """`2 cores`, `7.5 GiB`, `0.67 core-hours`."""
    rounded = round(value, 2)
    text = str(int(rounded)) if rounded == int(rounded) else f"{rounded:g}"
    return f"{text} {UNITS.get(resource, '')}".rstrip()


def describe(resources: Mapping[str, float]) -> str:
    """`cpu 2 cores, memory_gib 8 GiB` for the resources asked for (zeros left out)."""
    parts = [f"{name} {amount(resources[name], name)}" for name in RESOURCES if resources.get(name)]
    return ", ".join(parts) or "nothing"


def clean(resources: Mapping[str, Any], *, limits: bool = False) -> dict[str, float]:
    """Known resources only, as floats; unknown names are an error (a typo must not ask for nothing).

    A request leaves out what it asks none of; a limit of 0 stays (it allows none).
    """
    unknown = sorted(set(resources) - set(RESOURCES))
    if unknown:
        raise ValueError(f"unknown resources {unknown}; known: {list(RESOURCES)}")
    skip = (None,) if limits else (None, 0, 0.0)
    return {name: float(resources[name]) for name in RESOURCES if resources.get(name) not in skip}


def stage_request(
    per_worker: Mapping[str, float],
    *,
    expected_seconds: float,
    workers: int = 1,
    parallel: int = 1,
    instances: int = 1,
) -> dict[str, float]:
    """The reservation of one guarded task from what one worker of one instance asks for.

    A stage runs `instances` times (mapped tuning trials; 1 otherwise), at most `parallel` of them at
    once (the pool bounds it), each on `workers` workers (distributed training). Held resources are
    the peak (`parallel` instances at once); core- and GPU-hours are the total over every instance for
    its expected duration.
    """
    if min(workers, parallel, instances) < 1 or parallel > instances:
        raise ValueError(f"need 1 <= parallel <= instances and workers >= 1, got {workers=} {parallel=} {instances=}")
    hours = expected_seconds / 3600
    cpu = float(per_worker.get("cpu", 0))
    gpu = float(per_worker.get("gpu", 0))
    return clean(
        {
            "cpu": cpu * workers * parallel,
            "memory_gib": float(per_worker.get("memory_gib", 0)) * workers * parallel,
            "gpu": gpu * workers * parallel,
            "cpu_hours": round(cpu * workers * instances * hours, 4),
            "gpu_hours": round(gpu * workers * instances * hours, 4),
        }
    )


def pool_slots(request: Mapping[str, float]) -> int:
    """Pool slots of a task: one per core it holds, at least one."""
    return max(1, math.ceil(request.get("cpu", 0) - 1e-9))


@dataclass(frozen=True)
class Holder:
    """Who holds a reservation: the guarded task of one DAG run, for every try of it.

    The key leaves out the try number on purpose: a retry of the task finds and reuses the
    reservation its earlier try took, instead of taking a second one.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    @property
    def key(self) -> str:
        return f"{self.dag_id}/{self.run_id}/{self.task_id}/{self.map_index}"

    def label(self) -> str:
        index = "" if self.map_index < 0 else f"[{self.map_index}]"
        return f"{self.dag_id}.{self.task_id}{index} of run {self.run_id}"

    def to_dict(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, "task_id": self.task_id, "map_index": self.map_index}


@dataclass(frozen=True)
class Capacity:
    """One resource as a provider sees it: its limit, what is used now, and where the figure comes from."""

    resource: str
    limit: float
    used: float = 0.0
    source: str = ""

    @property
    def free(self) -> float:
        return max(0.0, self.limit - self.used)


@dataclass(frozen=True)
class Share:
    """Part of a limit held by one reservation (who holds the rest, in a refusal)."""

    pipeline: str
    holder: str
    amount: float
    lease_expires_at: float | None = None


@dataclass(frozen=True)
class Shortage:
    """One limit a request does not fit in."""

    scope: str  # "shared budget", "pipeline cap of <pipeline>", "provider <name>"
    resource: str
    asked: float
    limit: float
    used: float
    holders: tuple[Share, ...] = ()
    note: str = ""

    @property
    def free(self) -> float:
        return max(0.0, self.limit - self.used)

    def describe(self) -> str:
        text = (
            f"{self.resource}: asked {amount(self.asked, self.resource)}, {amount(self.free, self.resource)} free "
            f"of the {self.scope}'s {amount(self.limit, self.resource)}"
        )
        if self.holders:
            held = "; ".join(
                f"{share.pipeline} {share.holder}: {amount(share.amount, self.resource)}"
                for share in sorted(self.holders, key=lambda share: -share.amount)
            )
            text += f"; held by {held}"
        elif self.used > 0:
            text += f"; {amount(self.used, self.resource)} in use"
        if self.note:
            text += f" ({self.note})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "resource": self.resource,
            "asked": self.asked,
            "limit": self.limit,
            "used": self.used,
            "free": self.free,
            "holders": [share.__dict__ for share in self.holders],
            "note": self.note,
        }


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: what was asked, and for each limit it does not fit in, what is free and who
    holds the rest."""

    pipeline: str
    holder: str
    asked: dict[str, float]
    shortages: tuple[Shortage, ...] = field(default_factory=tuple)

    def message(self) -> str:
        lines = [f"quota refused for {self.pipeline} {self.holder}: asked {describe(self.asked)}"]
        lines += [f"  - {shortage.describe()}" for shortage in self.shortages]
        return "\n".join(lines)

    @property
    def resources(self) -> list[str]:
        return sorted({shortage.resource for shortage in self.shortages})

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "holder": self.holder,
            "asked": self.asked,
            "shortages": [shortage.to_dict() for shortage in self.shortages],
            "message": self.message(),
        }
