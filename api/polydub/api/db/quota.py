"""The SQL behind a key's limits: its token bucket (``api_rate_buckets``, shared by every API
replica) and its count of active jobs. The decisions (refuse, Retry-After) are
``polydub.api.ratelimit``'s.
"""

from __future__ import annotations

import uuid

import asyncpg

# One round trip: lock the key's row, refill by the elapsed time, take up to $3 whole tokens.
_REFILL = """
WITH cur AS (
    SELECT LEAST($2::float8, tokens
                 + EXTRACT(EPOCH FROM clock_timestamp() - updated_at)::float8 * $2 / 60.0)
           AS refilled
      FROM api_rate_buckets WHERE key_id = $1 FOR UPDATE
)
UPDATE api_rate_buckets b
   SET tokens = cur.refilled - LEAST($3::float8, GREATEST(FLOOR(cur.refilled), 0)),
       updated_at = clock_timestamp()
  FROM cur
 WHERE b.key_id = $1
RETURNING cur.refilled
"""


async def refill_and_take(
    pool: asyncpg.Pool, key_id: uuid.UUID, rate: float, want: int = 1
) -> float | None:
    """Refill the key's bucket at ``rate`` tokens a minute and take up to ``want`` whole tokens
    (``min(want, floor(before))``); returns the tokens there were before taking, or None when
    the key has no bucket yet."""
    refilled: float | None = await pool.fetchval(_REFILL, key_id, rate, want)
    return refilled


async def open_bucket(pool: asyncpg.Pool, key_id: uuid.UUID, tokens: float) -> None:
    """The key's first bucket, holding ``tokens``; a concurrent first request's bucket wins."""
    await pool.execute(
        "INSERT INTO api_rate_buckets (key_id, tokens, updated_at)"
        " VALUES ($1, $2, clock_timestamp()) ON CONFLICT (key_id) DO NOTHING",
        key_id,
        tokens,
    )


async def lock_owner(conn: asyncpg.Connection, owner: uuid.UUID) -> None:
    """Serialise the owner's job admissions until the caller's transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 0))", owner)


async def idempotency_key_used(conn: asyncpg.Connection, owner: uuid.UUID, key: str) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM jobs WHERE owner_id = $1 AND idempotency_key = $2", owner, key
    )
    return bool(found)


async def active_jobs(conn: asyncpg.Connection | asyncpg.Pool, owner: uuid.UUID) -> int:
    """The owner's queued and running jobs: what its concurrent-job quota counts."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE owner_id = $1 AND status IN ('queued', 'running')", owner
    )
    return count
