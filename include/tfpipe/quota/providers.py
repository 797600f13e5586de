"""Real capacity: what the machine (or the cloud project) can give, checked before the ledger is asked.

A provider answers `capacity()` with the limit and current use of each resource it knows; a resource it
does not report is not limited by it (Google Cloud has no memory quota; nothing has a core-hours quota
per day). The ledger, not the provider, is what stops pipelines from over-committing one another: the
provider check catches a request the real machine or project cannot satisfy right now.

The local provider, the embedded default:
- `cpu`: the cores this process may run on. Cores are not "used up" by load (a busy machine is slower,
  not full), so a request only has to fit the machine; the ledger's budget bounds how many run at once.
- `memory_gib`: MemTotal, with MemAvailable free now (/proc/meminfo): memory taken outside tfpipe counts.
- `gpu`: GPUs that `nvidia-smi` lists; none when it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import Protocol

from tfpipe.quota.resources import Capacity, Shortage


class QuotaProvider(Protocol):
    name: str

    def capacity(self) -> dict[str, Capacity]: ...


def _meminfo(path: str = "/proc/meminfo") -> dict[str, float]:
    """Fields of /proc/meminfo in GiB."""
    values: dict[str, float] = {}
    try:
        with open(path) as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[name] = int(parts[0]) / (1024 * 1024)  # kB -> GiB
    except OSError:
        pass
    return values


def _gpu_count(nvidia_smi: str | None) -> int:
    if not nvidia_smi:
        return 0
    try:
        done = subprocess.run(
            [nvidia_smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in done.stdout.splitlines() if line.strip())


class LocalQuotaProvider:
    """Cores, free memory and GPUs of this machine."""

    name = "local"

    def __init__(self, meminfo_path: str = "/proc/meminfo", nvidia_smi: str | None = "auto") -> None:
        self.meminfo_path = meminfo_path
        self.nvidia_smi = shutil.which("nvidia-smi") if nvidia_smi == "auto" else nvidia_smi

    def capacity(self) -> dict[str, Capacity]:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        found = {"cpu": Capacity("cpu", float(cores), 0.0, "cores of this machine")}
        memory = _meminfo(self.meminfo_path)
        if "MemTotal" in memory:
            available = memory.get("MemAvailable", memory.get("MemFree", 0.0))
            found["memory_gib"] = Capacity(
                "memory_gib", round(memory["MemTotal"], 2), round(memory["MemTotal"] - available, 2), "MemAvailable"
            )
        found["gpu"] = Capacity("gpu", float(_gpu_count(self.nvidia_smi)), 0.0, "nvidia-smi")
        return found


def provider_shortages(
    provider_name: str, capacity: Mapping[str, Capacity], request: Mapping[str, float]
) -> list[Shortage]:
    """The resources of `request` that the provider cannot give now."""
    shortages = []
    for resource, asked in request.items():
        known = capacity.get(resource)
        if known is None or asked <= known.free + 1e-9:
            continue
        shortages.append(
            Shortage(
                scope=f"provider {provider_name}",
                resource=resource,
                asked=asked,
                limit=known.limit,
                used=known.used,
                note=f"{known.source}; used outside the ledger" if known.source else "used outside the ledger",
            )
        )
    return shortages
