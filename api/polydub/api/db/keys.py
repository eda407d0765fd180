"""The SQL of API keys (``api_keys``): the caller (``polydub.api.auth``) hashes, compares and
generates; these only read and write rows. A key is stored as its sha256, never in clear."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg


async def key_by_prefix(
    conn: asyncpg.Connection | asyncpg.Pool, prefix: str
) -> asyncpg.Record | None:
    """The key's row with its stored hash and revocation time, or None."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, name, prefix, key_hash, rate_limit_per_minute, max_concurrent_jobs,"
        " webhook_secret, revoked_at FROM api_keys WHERE prefix = $1",
        prefix,
    )
    return row


async def insert_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    key_id: uuid.UUID,
    name: str,
    prefix: str,
    key_hash: bytes,
    rate_limit_per_minute: int,
    max_concurrent_jobs: int,
    webhook_secret: str,
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (id, name, prefix, key_hash, rate_limit_per_minute,"
        " max_concurrent_jobs, webhook_secret) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        key_id,
        name,
        prefix,
        key_hash,
        rate_limit_per_minute,
        max_concurrent_jobs,
        webhook_secret,
    )


async def revoke(
    conn: asyncpg.Connection | asyncpg.Pool, prefix: str, key_id: uuid.UUID | None
) -> datetime | None:
    """Revoke the key with this prefix or id; returns when it was revoked (the first time, if
    it already was), or None when there is no such key."""
    revoked: datetime | None = await conn.fetchval(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())"
        " WHERE prefix = $1 OR id = $2 RETURNING revoked_at",
        prefix,
        key_id,
    )
    return revoked


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, name, prefix, rate_limit_per_minute, max_concurrent_jobs, created_at,"
        " revoked_at, last_used_at FROM api_keys ORDER BY created_at"
    )
    return rows


async def key_active(conn: asyncpg.Connection | asyncpg.Pool, key_id: uuid.UUID) -> bool:
    """Whether the key still exists and is not revoked (open progress streams re-check it)."""
    active: bool | None = await conn.fetchval(
        "SELECT revoked_at IS NULL FROM api_keys WHERE id = $1", key_id
    )
    return bool(active)


async def webhook_secrets(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, webhook_secret FROM api_keys WHERE webhook_secret IS NOT NULL"
    )
    return rows


async def replace_webhook_secret(
    conn: asyncpg.Connection | asyncpg.Pool, key_id: uuid.UUID, old: str, new: str
) -> int:
    """Store ``new`` unless another process replaced ``old`` first; returns the rows changed."""
    status: str = await conn.execute(
        "UPDATE api_keys SET webhook_secret = $3 WHERE id = $1 AND webhook_secret = $2",
        key_id,
        old,
        new,
    )
    return int(status.split()[-1])
