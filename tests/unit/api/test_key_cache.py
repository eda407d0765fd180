"""``KeyCache``: what it keeps, for how long, and that a lookup racing an eviction never puts
a stale key back."""

from __future__ import annotations

import uuid

import pytest

from polydub.api.auth import ApiKey
from polydub.api.key_cache import KeyCache

pytestmark = pytest.mark.unit

KEY = ApiKey(uuid.uuid4(), "k", "0123456789ab", 600, 10)
HASH = b"h" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def listening_cache(ttl: float = 10.0, clock: Clock | None = None) -> KeyCache:
    cache = KeyCache(ttl, max_keys=2, clock=clock or Clock())
    cache.listening = True
    return cache


def test_a_cached_key_is_returned_only_for_the_same_whole_key() -> None:
    cache = listening_cache()
    cache.put(KEY.prefix, HASH, KEY, cache.generation)
    assert cache.get(KEY.prefix, HASH) is KEY
    assert cache.get(KEY.prefix, b"x" * 32) is None


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache = listening_cache(ttl=5.0, clock=clock)
    cache.put(KEY.prefix, HASH, KEY, cache.generation)
    clock.now = 4.9
    assert cache.get(KEY.prefix, HASH) is KEY
    clock.now = 5.0
    assert cache.get(KEY.prefix, HASH) is None


def test_nothing_is_cached_while_the_listener_is_down_or_ttl_is_zero() -> None:
    down = KeyCache(10.0)
    down.put(KEY.prefix, HASH, KEY, down.generation)
    assert down.get(KEY.prefix, HASH) is None
    off = listening_cache(ttl=0.0)
    off.put(KEY.prefix, HASH, KEY, off.generation)
    assert off.get(KEY.prefix, HASH) is None


def test_a_lookup_that_started_before_an_eviction_is_not_cached() -> None:
    cache = listening_cache()
    started = cache.generation  # the request reads the row here...
    cache.evict(KEY.prefix)  # ...the key is revoked and NOTIFY arrives...
    cache.put(KEY.prefix, HASH, KEY, started)  # ...then the request finishes
    assert cache.get(KEY.prefix, HASH) is None


def test_the_least_recently_cached_key_goes_first() -> None:
    cache = listening_cache()
    others = [ApiKey(uuid.uuid4(), "k", f"{i:012x}", 600, 10) for i in range(3)]
    for other in others:
        cache.put(other.prefix, HASH, other, cache.generation)
    assert cache.get(others[0].prefix, HASH) is None
    assert cache.get(others[2].prefix, HASH) is others[2]
