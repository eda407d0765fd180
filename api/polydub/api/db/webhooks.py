"""The SQL of webhook deliveries (``webhook_deliveries``): leasing due rows and recording each
attempt's outcome. The rows are written by ``polydub.jobs.record_webhook_delivery`` (with the
state change, by the orchestrator or the API's cancel); ``polydub.api.webhooks`` signs and sends.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg


async def claim_due(pool: asyncpg.Pool, batch: int, lease: timedelta) -> list[asyncpg.Record]:
    """Lease up to ``batch`` due pending rows: each attempt is counted and its next try pushed
    ``lease`` ahead, so a sender that dies mid-request leaves the row to be claimed again."""
    rows: list[asyncpg.Record] = await pool.fetch(
        """
        UPDATE webhook_deliveries d
           SET attempts = d.attempts + 1, next_attempt_at = now() + $2::interval
         WHERE d.id IN (SELECT id FROM webhook_deliveries
                         WHERE status = 'pending' AND next_attempt_at <= now()
                         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
     RETURNING d.id, d.job_id, d.state, d.language, d.url, d.attempts
        """,
        batch,
        lease,
    )
    return rows


async def mark_delivered(pool: asyncpg.Pool, delivery_id: int) -> None:
    await pool.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(),"
        " last_error = NULL WHERE id = $1",
        delivery_id,
    )


async def mark_attempt_failed(
    pool: asyncpg.Pool, delivery_id: int, *, give_up: bool, error: str, retry_in: timedelta
) -> None:
    """Record a failed attempt: pending again after ``retry_in``, or failed for good."""
    await pool.execute(
        "UPDATE webhook_deliveries SET status = $2, last_error = $3,"
        " next_attempt_at = now() + $4::interval WHERE id = $1",
        delivery_id,
        "failed" if give_up else "pending",
        error,
        retry_in,
    )


async def deliveries_for(pool: asyncpg.Pool, job_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, state, language, url, status, attempts, last_error, delivered_at"
        " FROM webhook_deliveries WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    return [dict(r) for r in rows]
