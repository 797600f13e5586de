"""The sticky split: one key one version, the configured share of keys, monotone in the percent."""

from __future__ import annotations

import random

from tfpipe.serving.routing import BUCKETS, CANARY, STABLE, Routing, bucket_of, goes_to_canary

KEYS = [f"user-{i}" for i in range(20_000)]


def test_a_key_always_lands_in_the_same_bucket_in_range():
    buckets = [bucket_of(key) for key in KEYS[:1000]]
    assert buckets == [bucket_of(key) for key in KEYS[:1000]]
    assert all(0 <= b < BUCKETS for b in buckets)
    # The documented formula, so other processes (the canary analysis, a client) can compute it too.
    import hashlib

    assert bucket_of("abc") == int.from_bytes(hashlib.sha256(b"abc").digest()[:8], "big") % 10_000


def test_the_share_of_keys_on_the_canary_is_the_percent():
    for percent in (1, 10, 25, 50, 90):
        share = sum(goes_to_canary(bucket_of(key), percent) for key in KEYS) / len(KEYS)
        # 20,000 keys: the binomial standard deviation is at most 0.35 points.
        assert abs(share * 100 - percent) < 1.5, (percent, share)


def test_raising_the_percent_only_moves_keys_from_stable_to_canary():
    previous: set[str] = set()
    for percent in (0, 5, 10, 12.5, 25, 50, 99.99, 100):
        canary = {key for key in KEYS if goes_to_canary(bucket_of(key), percent)}
        assert previous <= canary
        previous = canary
    assert len(previous) == len(KEYS)


def test_routing_chooses_by_key_and_without_a_key_draws_at_random():
    stable, canary = object(), object()
    table = Routing(stable, canary, 30.0, 1)
    for key in KEYS[:200]:
        expected = (canary, CANARY) if bucket_of(key) < 3000 else (stable, STABLE)
        assert table.choose(key) == expected
    draws = [table.choose(None, random.Random(seed))[1] for seed in range(400)]
    assert 60 < draws.count(CANARY) < 180
    assert Routing(stable, None, 0.0).choose("x") == (stable, STABLE)
    assert Routing(stable, canary, 0.0).choose("x") == (stable, STABLE)
    assert Routing(stable, canary, 100.0).choose("x") == (canary, CANARY)
    assert Routing().choose("x") == (None, "")
    assert table.role_of(canary) == CANARY and table.role_of(object()) == ""
    assert table.by_label("stable") is stable and table.by_label("other") is None
