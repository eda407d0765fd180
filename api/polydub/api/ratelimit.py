"""Per-key rate limit (a token bucket in PostgreSQL) and the concurrent-job quota.

The bucket lives in the database so that every API replica shares it: one statement refills it
by the time elapsed (rate_limit_per_minute / 60 tokens a second, capped at one minute's worth)
and takes a token if there is one. A refused request takes nothing, so a client hammering a
full bucket does not push its own recovery further away. Retry-After says when a token returns.
The statements are ``polydub.api.db.quota``'s.
"""

from __future__ import annotations

import uuid

import asyncpg

from polydub.api.auth import ApiKey
from polydub.api.db import quota as quota_db
from polydub.api.errors import TooManyRequests


async def take_token(pool: asyncpg.Pool, key: ApiKey) -> None:
    """Take one request's token from the key's bucket, or raise 429 with Retry-After."""
    rate = float(key.rate_limit_per_minute)
    refilled = await quota_db.refill_and_take(pool, key.id, rate)
    if refilled is None:
        # First request of this key: a full bucket, less this request.
        await quota_db.open_bucket(pool, key.id, rate - 1)
        return
    if refilled < 1:
        wait = (1 - refilled) * 60.0 / rate
        raise TooManyRequests(
            f"rate limit of {key.rate_limit_per_minute} requests a minute exceeded",
            retry_after=wait,
            code="rate_limited",
            detail={"limit_per_minute": key.rate_limit_per_minute},
        )


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
