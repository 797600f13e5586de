"""The routing table (stable, canary, canary percent) and the sticky split of requests between them.

A request with a sticky key (the `X-Request-Key` header) is hashed into one of 10,000 buckets:

    bucket = int.from_bytes(sha256(key.encode("utf-8")).digest()[:8], "big") % 10_000
    canary  if bucket < canary_percent * 100

The hash is the same in every process and on every machine, so one key always sees one version for a
given percent, and raising the percent only moves keys from stable to canary, never back (monotone).
A request without a key gets a random bucket.

The server swaps the whole table with one reference assignment: a request reads the table once, so it
finishes on the version it was routed to whatever changes meanwhile.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Generic, TypeVar

BUCKETS = 10_000
STABLE = "stable"
CANARY = "canary"
ROLES = (STABLE, CANARY)

V = TypeVar("V")


def bucket_of(key: str) -> int:
    """The sticky key's bucket in [0, 10000)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") % BUCKETS


def goes_to_canary(bucket: int, canary_percent: float) -> bool:
    return bucket < canary_percent * (BUCKETS / 100)


@dataclass(frozen=True)
class Routing(Generic[V]):
    stable: V | None = None
    canary: V | None = None
    canary_percent: float = 0.0
    generation: int = 0

    def choose(self, key: str | None, draw: random.Random | None = None) -> tuple[V | None, str]:
        """The version a request goes to and its role; (None, "") when nothing serves."""
        if self.canary is not None and self.canary_percent > 0:
            bucket = bucket_of(key) if key else (draw or random).randrange(BUCKETS)
            if goes_to_canary(bucket, self.canary_percent):
                return self.canary, CANARY
        if self.stable is None:
            return None, ""
        return self.stable, STABLE

    def role_of(self, version: V) -> str:
        if self.stable is version:
            return STABLE
        if self.canary is version:
            return CANARY
        return ""

    def by_label(self, label: str) -> V | None:
        return self.stable if label == STABLE else self.canary if label == CANARY else None
