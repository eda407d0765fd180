"""The outbox's SQL: a queue message is written with the change that makes it (a new or
re-queued job), and the relay (``polydub.api.outbox``) takes pending rows, publishes them and
marks them, all in the transaction it holds.
"""

from __future__ import annotations

import asyncpg

from polydub.jobs import JobMessage
from polydub.settings import Settings
from polydub.telemetry.propagation import inject_headers


async def enqueue(
    conn: asyncpg.Connection, settings: Settings, message: JobMessage, *, msg_id: str | None = None
) -> None:
    """The job's queue message, as an outbox row committed with the job (the relay sends it).
    ``msg_id`` replaces the message's own id (the reconciler's republish needs a fresh one)."""
    await conn.execute(
        "INSERT INTO outbox (subject, msg_id, payload, headers) VALUES ($1, $2, $3, $4)",
        settings.jobs_subject,
        msg_id or message.msg_id,
        message.to_json(),
        inject_headers(),  # the submitting span's trace context, for the worker to continue
    )


async def lock_pending(conn: asyncpg.Connection, batch: int) -> list[asyncpg.Record]:
    """Up to ``batch`` unpublished rows, the least tried first and then oldest first, locked for
    the caller's transaction; rows another replica holds are skipped, so no two publish the same
    row at once. Rows that keep failing sort last: they never fill a batch ahead of new ones."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, subject, msg_id, payload, headers FROM outbox"
        " WHERE published_at IS NULL ORDER BY attempts, id LIMIT $1 FOR UPDATE SKIP LOCKED",
        batch,
    )
    return rows


async def record_failure(conn: asyncpg.Connection, row_id: int, error: str) -> None:
    await conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
        row_id,
        error,
    )


async def mark_published(conn: asyncpg.Connection, row_ids: list[int]) -> None:
    await conn.execute(
        "UPDATE outbox SET published_at = now(), attempts = attempts + 1,"
        " last_error = NULL WHERE id = ANY($1::bigint[])",
        row_ids,
    )
