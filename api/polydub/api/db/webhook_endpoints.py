"""The SQL of account-level webhook endpoints (``webhook_endpoints``): each key's own list.
``polydub.jobs.record_webhook_delivery`` reads it when a job or language ends."""

from __future__ import annotations

import uuid

import asyncpg

from polydub.errors import Conflict, InvalidInput

_COLUMNS = "id, url, description, created_at"


async def create_endpoint(
    pool: asyncpg.Pool, owner: uuid.UUID, url: str, description: str | None, limit: int
) -> asyncpg.Record:
    """A new endpoint; 409 if the key has this URL already, 422 past ``limit`` endpoints."""
    async with pool.acquire() as conn, conn.transaction():
        # Serialises a key's concurrent creations, so the count below holds until commit.
        await conn.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", owner)
        count = await conn.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE owner_id = $1", owner
        )
        if count >= limit:
            raise InvalidInput(
                f"at most {limit} webhook endpoints per key", code="too_many_webhook_endpoints"
            )
        row: asyncpg.Record | None = await conn.fetchrow(
            f"INSERT INTO webhook_endpoints (id, owner_id, url, description)"
            f" VALUES ($1, $2, $3, $4) ON CONFLICT (owner_id, url) DO NOTHING RETURNING {_COLUMNS}",
            uuid.uuid4(),
            owner,
            url,
            description,
        )
    if row is None:
        raise Conflict("this URL is a webhook endpoint already", code="webhook_endpoint_exists")
    return row


async def list_endpoints(pool: asyncpg.Pool, owner: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE owner_id = $1 ORDER BY created_at, id",
        owner,
    )
    return rows


async def delete_endpoint(pool: asyncpg.Pool, owner: uuid.UUID, endpoint_id: uuid.UUID) -> bool:
    """False when there is no such endpoint of this key (another key's is not found either).
    Deliveries already queued to it still go out: they were due when it was registered."""
    deleted = await pool.fetchval(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND owner_id = $2 RETURNING id",
        endpoint_id,
        owner,
    )
    return deleted is not None
