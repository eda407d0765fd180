"""The key cache and the leased rate-limit tokens on the real PostgreSQL: a change to a key row
evicts it in every listening replica, a lost listener connection turns the cache off until it
is back, and a steady poller costs one bucket write per lease instead of one per request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg
import pytest

from polydub.api.auth import ApiKey, authenticate, create_key, hash_key, revoke_key
from polydub.api.errors import TooManyRequests, Unauthenticated
from polydub.api.key_cache import KeyCache
from polydub.api.ratelimit import TokenLeases
from polydub.settings import Settings

pytestmark = pytest.mark.integration


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


async def test_a_revoked_key_is_evicted_by_notify_and_a_lost_listener_disables_the_cache(
    db_pool: asyncpg.Pool, stack_settings: Settings
) -> None:
    cache = KeyCache(ttl=600.0)
    listener = asyncio.create_task(cache.listen(stack_settings.postgres_dsn))
    try:
        await until(lambda: cache.listening)
        new = await create_key(db_pool, "cached")
        first = await authenticate(db_pool, new.key, cache)
        assert cache.get(new.prefix, _digest(new.key)) == first

        # Cut the listener's connection: the cache empties and stays off until it reconnects.
        await db_pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
        )
        await until(lambda: not cache.listening)
        assert cache.get(new.prefix, _digest(new.key)) is None
        await until(lambda: cache.listening)

        await authenticate(db_pool, new.key, cache)
        assert cache.get(new.prefix, _digest(new.key)) is not None
        await revoke_key(db_pool, new.prefix)
        await until(lambda: cache.get(new.prefix, _digest(new.key)) is None, within=2.0)
        with pytest.raises(Unauthenticated) as refused:
            await authenticate(db_pool, new.key, cache)
        assert refused.value.code == "api_key_revoked"

        # TRUNCATE names no row: its trigger sends '*', which empties the whole cache. The
        # session's other tests need their keys, so this sends that NOTIFY itself and checks
        # that the trigger exists.
        kept = await create_key(db_pool, "kept")
        await authenticate(db_pool, kept.key, cache)
        assert cache.get(kept.prefix, _digest(kept.key)) is not None
        await db_pool.execute("NOTIFY polydub_api_keys, '*'")
        await until(lambda: cache.get(kept.prefix, _digest(kept.key)) is None, within=2.0)
        triggers = await db_pool.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'api_keys_truncated'"
        )
        assert triggers == 1
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def test_leases_take_tokens_a_second_at_a_time_and_still_enforce_the_limit(
    db_pool: asyncpg.Pool,
) -> None:
    key = await _api_key(db_pool, rate=600)
    leases = TokenLeases(lease_seconds=1.0)
    assert leases.lease_size(600) == 10
    for _ in range(25):
        await leases.take(db_pool, key)
    await _top_up_done(leases, key)
    # Leases and top-ups of at most 10 tokens in hand, not 25 writes: the bucket lost the 25
    # tokens spent and at most one lease more (less the refill).
    tokens = await db_pool.fetchval("SELECT tokens FROM api_rate_buckets WHERE key_id = $1", key.id)
    assert 565 <= tokens < 575

    # An unspent lease expires: after lease_seconds a request takes a fresh one.
    now = [0.0]
    expiring = TokenLeases(lease_seconds=1.0, clock=lambda: now[0])
    other = await _api_key(db_pool, rate=600)
    await expiring.take(db_pool, other)
    now[0] = 1.5
    await expiring.take(db_pool, other)
    tokens = await db_pool.fetchval(
        "SELECT tokens FROM api_rate_buckets WHERE key_id = $1", other.id
    )
    assert 580 <= tokens < 585  # two leases of 10

    slow = await _api_key(db_pool, rate=3)
    small = TokenLeases(lease_seconds=1.0)
    for _ in range(3):
        await small.take(db_pool, slow)
    with pytest.raises(TooManyRequests) as limited:
        await small.take(db_pool, slow)
    assert limited.value.code == "rate_limited"


async def test_requests_spend_the_lease_while_its_top_up_waits_on_the_database(
    db_pool: asyncpg.Pool,
) -> None:
    # 60 a minute with 10 s leases: leases of 10, and a bucket that refills 1 token a second.
    key = await _api_key(db_pool, rate=60)
    # A clock that stands still: no lease expires or gets old, only spending counts.
    leases = TokenLeases(lease_seconds=10.0, clock=lambda: 0.0)
    await leases.take(db_pool, key)  # a lease of 10, 9 in hand
    async with db_pool.acquire() as blocker, blocker.transaction():
        # The bucket's row is locked: a write to it waits until this transaction ends.
        await blocker.execute(
            "SELECT tokens FROM api_rate_buckets WHERE key_id = $1 FOR UPDATE", key.id
        )
        for _ in range(5):
            await leases.take(db_pool, key)  # 4 in hand: under half, a top-up starts
        await asyncio.sleep(0.2)
        top_up = leases._leases[key.id].top_up
        assert top_up is not None and not top_up.done()
        waiting = await db_pool.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
        assert waiting >= 1  # its write waits on the row lock
        for _ in range(4):  # the rest of the lease, without waiting for the write
            await asyncio.wait_for(leases.take(db_pool, key), 1.0)
        assert not top_up.done()
    await asyncio.wait_for(top_up, 10.0)
    # It took what the lease lacked when it started (6), and the lease starts afresh.
    assert leases._leases[key.id].tokens == 6
    tokens = await db_pool.fetchval("SELECT tokens FROM api_rate_buckets WHERE key_id = $1", key.id)
    assert 44 <= tokens < 50  # 60 - 10 - 6, plus the refill meanwhile (1 token a second)


async def _top_up_done(leases: TokenLeases, key: ApiKey) -> None:
    top_up = leases._leases[key.id].top_up
    if top_up is not None:
        await asyncio.wait_for(top_up, 10.0)


async def _api_key(db_pool: asyncpg.Pool, rate: int) -> ApiKey:
    new = await create_key(db_pool, f"leases-{rate}", rate_limit_per_minute=rate)
    return await authenticate(db_pool, new.key)


def _digest(key: str) -> bytes:
    return hash_key(key)
