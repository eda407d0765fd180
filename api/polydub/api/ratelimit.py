"""Per-key rate limit (a token bucket in PostgreSQL) and the concurrent-job quota.

The bucket lives in the database so that every API replica shares it: one statement refills it
by the time elapsed (rate_limit_per_minute / 60 tokens a second, capped at one minute's worth)
and takes a token if there is one. A refused request takes nothing, so a client hammering a
full bucket does not push its own recovery further away. Retry-After says when a token returns.
Each replica takes tokens a lease at a time (``TokenLeases``), so a steady poller costs one write a
second, not one a request, and tops the lease up in the background before it runs out, so a
request waits on that write only when its key's lease is empty. The statements are
``polydub.api.db.quota``'s.

Failed authentications are limited per client address (``FailedAuthLimiter``) in each replica's
memory instead: a flood of bad keys must not cost a database write each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from polydub.api.auth import ApiKey
from polydub.api.db import quota as quota_db
from polydub.api.errors import TooManyRequests

log = logging.getLogger("polydub.api.ratelimit")


@dataclass
class _Lease:
    tokens: int = 0
    expires: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    top_up: asyncio.Task[None] | None = None  # the background renewal in flight, if any


class TokenLeases:
    """Each replica takes a key's tokens from the shared bucket a lease at a time: up to
    ``lease_seconds`` of the key's rate in one statement, then spends them from memory for at
    most ``lease_seconds``, so a steady poller costs one bucket write a second instead of one a
    request (two at most, with the top-ups below). Every token still comes out of the shared
    bucket; a replica holds at most one lease's worth of tokens, so over any stretch of time a key gets at most one lease per
    replica beyond what the bucket alone would allow, and an unspent lease expires (holding
    back at most that much; a top-up gives the tokens left a new expiry). ``lease_seconds`` 0: a
    write each request.

    A lease half spent, or half way to its expiry, is topped up to a whole lease in the
    background while requests go on spending it. Renewing only once it ran out made every
    request of the key wait for that write: under load, the slowest 1-10% of status polls spent
    17-72 ms there (issue 17, item 5)."""

    def __init__(
        self,
        lease_seconds: float,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease_seconds = lease_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._leases: dict[uuid.UUID, _Lease] = {}

    def lease_size(self, rate_per_minute: int) -> int:
        return max(1, int(rate_per_minute * self.lease_seconds / 60.0))

    async def take(self, pool: asyncpg.Pool, key: ApiKey) -> None:
        """Take one request's token, or raise 429 with Retry-After."""
        lease = self._leases.get(key.id)
        if lease is None:
            self._forget_expired()
            lease = self._leases.setdefault(key.id, _Lease())
        if self._spend(lease):
            if lease.top_up is None and self._running_low(lease, key):
                lease.top_up = asyncio.create_task(self._top_up(pool, key, lease))
            return
        # One lease at a time per key: requests that arrive meanwhile spend what it brings.
        async with lease.lock:
            if self._spend(lease):
                return
            tokens = await self._lease(pool, key, self.lease_size(key.rate_limit_per_minute))
            lease.tokens, lease.expires = tokens - 1, self.clock() + self.lease_seconds

    def _spend(self, lease: _Lease) -> bool:
        if lease.tokens < 1 or self.clock() >= lease.expires:
            return False
        lease.tokens -= 1
        return True

    def _running_low(self, lease: _Lease, key: ApiKey) -> bool:
        size = self.lease_size(key.rate_limit_per_minute)
        half_way = lease.expires - self.lease_seconds / 2
        return size > 1 and (2 * lease.tokens < size or self.clock() >= half_way)

    async def _top_up(self, pool: asyncpg.Pool, key: ApiKey, lease: _Lease) -> None:
        """Take what the lease lacks of a whole one and start it afresh. Best effort: when the
        bucket is empty or the database fails, the lease runs out as it is and the request that
        finds it empty takes a lease itself (and gets the 429 or the error)."""
        try:
            async with lease.lock:
                want = self.lease_size(key.rate_limit_per_minute) - max(lease.tokens, 0)
                if want > 0 and self.clock() < lease.expires:
                    tokens = await self._lease(pool, key, want)
                    lease.tokens += tokens
                    lease.expires = self.clock() + self.lease_seconds
        except TooManyRequests:
            pass
        except Exception as exc:  # best effort: nobody awaits this task
            log.warning("rate-limit lease top-up failed", extra={"error": repr(exc)})
        finally:
            lease.top_up = None

    def _forget_expired(self) -> None:
        if len(self._leases) < self.max_keys:
            return
        now = self.clock()
        for key_id in [
            k for k, v in self._leases.items() if v.expires <= now and not v.lock.locked()
        ]:
            del self._leases[key_id]

    async def _lease(self, pool: asyncpg.Pool, key: ApiKey, want: int) -> int:
        rate = float(key.rate_limit_per_minute)
        refilled = await quota_db.refill_and_take(pool, key.id, rate, want)
        if refilled is None:
            # First request of this key: a full bucket, less this lease.
            await quota_db.open_bucket(pool, key.id, rate - want)
            return want
        if refilled < 1:
            wait = (1 - refilled) * 60.0 / rate
            raise TooManyRequests(
                f"rate limit of {key.rate_limit_per_minute} requests a minute exceeded",
                retry_after=wait,
                code="rate_limited",
                detail={"limit_per_minute": key.rate_limit_per_minute},
            )
        return min(want, math.floor(refilled))


async def check_job_quota(
    conn: asyncpg.Connection, owner: uuid.UUID, limit: int, *, idempotency_key: str | None = None
) -> None:
    """Inside the transaction that adds or re-queues a job: serialise per owner, then count.
    A request whose Idempotency-Key already names a job is a replay, never over quota."""
    await quota_db.lock_owner(conn, owner)
    if idempotency_key is not None and await quota_db.idempotency_key_used(
        conn, owner, idempotency_key
    ):
        return
    if await quota_db.active_jobs(conn, owner) >= limit:
        raise quota_error(limit)


def quota_error(limit: int) -> TooManyRequests:
    return TooManyRequests(
        f"at most {limit} jobs may be queued or running at once for this key",
        retry_after=30,
        code="concurrent_jobs_quota",
        detail={"max_concurrent_jobs": limit},
    )


class FailedAuthLimiter:
    """A token bucket of failed authentications per client address (``per_minute`` of them,
    refilled continuously). While an address's bucket is empty, a request of it that carries a
    key is refused with 429 ``auth_rate_limited`` before the key is looked up. The least recently
    failing addresses are forgotten past ``max_clients`` (a forgotten bucket is a full one)."""

    def __init__(
        self, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, client: str, per_minute: int, now: float) -> float:
        tokens, at = self._buckets.get(client, (float(per_minute), now))
        return min(float(per_minute), tokens + (now - at) * per_minute / 60.0)

    def check(self, client: str, per_minute: int) -> None:
        tokens = self._tokens(client, per_minute, self.clock())
        if tokens < 1:
            raise TooManyRequests(
                "too many failed authentications from this address",
                retry_after=(1 - tokens) * 60.0 / per_minute,
                code="auth_rate_limited",
                detail={"failures_per_minute": per_minute},
            )

    def failed(self, client: str, per_minute: int) -> None:
        now = self.clock()
        self._buckets[client] = (self._tokens(client, per_minute, now) - 1, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
