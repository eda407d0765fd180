"""Per-key rate limit (a token bucket in PostgreSQL) and the concurrent-job quota.

The bucket lives in the database so that every API replica shares it: one statement refills it
by the time elapsed (rate_limit_per_minute / 60 tokens a second, capped at one minute's worth)
and takes a token if there is one. A refused request takes nothing, so a client hammering a
full bucket does not push its own recovery further away. Retry-After says when a token returns.
"""

from __future__ import annotations

import uuid

import asyncpg

from polydub.api.auth import ApiKey
from polydub.api.errors import TooManyRequests

# One round trip: lock the key's row, refill by the elapsed time, take a token if there is one.
_REFILL = """
WITH cur AS (
    SELECT LEAST($2::float8, tokens
                 + EXTRACT(EPOCH FROM clock_timestamp() - updated_at)::float8 * $2 / 60.0)
           AS refilled
      FROM api_rate_buckets WHERE key_id = $1 FOR UPDATE
)
UPDATE api_rate_buckets b
   SET tokens = CASE WHEN cur.refilled >= 1 THEN cur.refilled - 1 ELSE cur.refilled END,
       updated_at = clock_timestamp()
  FROM cur
 WHERE b.key_id = $1
RETURNING cur.refilled
"""


async def take_token(pool: asyncpg.Pool, key: ApiKey) -> None:
    """Take one request's token from the key's bucket, or raise 429 with Retry-After."""
    rate = float(key.rate_limit_per_minute)
    refilled: float | None = await pool.fetchval(_REFILL, key.id, rate)
    if refilled is None:
        # First request of this key: a full bucket, less this request.
        await pool.execute(
            "INSERT INTO api_rate_buckets (key_id, tokens, updated_at)"
            " VALUES ($1, $2, clock_timestamp()) ON CONFLICT (key_id) DO NOTHING",
            key.id,
            rate - 1,
        )
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
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 0))", owner)
    if idempotency_key is not None and await conn.fetchval(
        "SELECT 1 FROM jobs WHERE owner_id = $1 AND idempotency_key = $2", owner, idempotency_key
    ):
        return
    active: int = await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE owner_id = $1 AND status IN ('queued', 'running')", owner
    )
    if active >= limit:
        raise quota_error(limit)


async def active_jobs(pool: asyncpg.Pool, owner: uuid.UUID) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM jobs WHERE owner_id = $1 AND status IN ('queued', 'running')", owner
    )
    return count


def quota_error(limit: int) -> TooManyRequests:
    return TooManyRequests(
        f"at most {limit} jobs may be queued or running at once for this key",
        retry_after=30,
        code="concurrent_jobs_quota",
        detail={"max_concurrent_jobs": limit},
    )
