"""The SQL of presigned upload reservations (``POST /uploads``): reserve one under the key's cap,
find and claim it for the ``POST /jobs`` that uses it, and forget it.

A reservation is open until it expires or a ``POST /jobs`` claims it (``consumed_at``); the
claim keeps a concurrent twin out and the orphan sweep (``polydub.api.retention``) off its
object while the upload is copied and probed. Rows are deleted once the job exists or the
upload was refused; the expired ones by the retention pass.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from polydub.api.db.quota import lock_owner
from polydub.api.errors import TooManyRequests


async def reserve_upload(
    pool: asyncpg.Pool,
    upload_id: uuid.UUID,
    owner: uuid.UUID,
    object_key: str,
    filename: str | None,
    expires_at: datetime,
    cap: int,
) -> None:
    """A presigned upload's row, unless the owner already holds ``cap`` open reservations: then
    429 ``open_uploads_quota``, with Retry-After until the soonest of them expires."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_owner(conn, owner)  # two concurrent reservations cannot both take the last
        held = await conn.fetchrow(
            "SELECT count(*) AS n, min(expires_at) - now() AS soonest FROM uploads"
            " WHERE owner_id = $1 AND consumed_at IS NULL AND expires_at > now()",
            owner,
        )
        if held["n"] >= cap:
            raise TooManyRequests(
                f"at most {cap} uploads may be reserved and not yet used at once for this key",
                retry_after=held["soonest"].total_seconds(),
                code="open_uploads_quota",
                detail={"max_open_uploads": cap},
            )
        await conn.execute(
            "INSERT INTO uploads (id, owner_id, object_key, filename, expires_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            upload_id,
            owner,
            object_key,
            filename,
            expires_at,
        )


async def find_upload(
    pool: asyncpg.Pool, upload_id: uuid.UUID, owner: uuid.UUID
) -> asyncpg.Record | None:
    """The owner's open upload (id, object_key, filename): unexpired and not being used."""
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT id, object_key, filename FROM uploads"
        " WHERE id = $1 AND owner_id = $2 AND expires_at > now() AND consumed_at IS NULL",
        upload_id,
        owner,
    )
    return row


async def claim_upload(pool: asyncpg.Pool, upload_id: uuid.UUID) -> bool:
    """Take the open upload for one POST /jobs; False when a concurrent one took it first."""
    claimed = await pool.fetchval(
        "UPDATE uploads SET consumed_at = now()"
        " WHERE id = $1 AND consumed_at IS NULL AND expires_at > now() RETURNING id",
        upload_id,
    )
    return claimed is not None


async def release_upload(pool: asyncpg.Pool, upload_id: uuid.UUID) -> None:
    """Open again after a failure that was not the upload's fault (the client may retry)."""
    await pool.execute("UPDATE uploads SET consumed_at = NULL WHERE id = $1", upload_id)


async def delete_upload(pool: asyncpg.Pool, upload_id: uuid.UUID) -> None:
    await pool.execute("DELETE FROM uploads WHERE id = $1", upload_id)
