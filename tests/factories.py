"""Rows as the API would write them, for tests of the orchestrator that run without the API."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

import asyncpg

from polydub.jobs import JobKeys


async def create_owner(pool: asyncpg.Pool, name: str = "test") -> uuid.UUID:
    owner = uuid.uuid4()
    await pool.execute(
        "INSERT INTO api_keys (id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)",
        owner,
        name,
        secrets.token_hex(6),
        hashlib.sha256(secrets.token_bytes(32)).digest(),
    )
    return owner


async def create_job(
    pool: asyncpg.Pool,
    owner: uuid.UUID,
    targets: list[str],
    *,
    source: str | None = "eng",
    input_key: str | None = None,
    options: dict[str, Any] | None = None,
    callback_url: str | None = None,
) -> uuid.UUID:
    job_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO jobs (id, owner_id, source_language, options, input_key, callback_url)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            job_id,
            owner,
            source,
            options or {},
            input_key or JobKeys(job_id).input,
            callback_url,
        )
        await conn.executemany(
            "INSERT INTO job_targets (job_id, language) VALUES ($1, $2)",
            [(job_id, t) for t in targets],
        )
    return job_id
