"""The outbox relay: publishes committed queue messages to JetStream, at least once.

A job row and its outbox row commit together; this relay (one per API replica) takes pending
rows with ``FOR UPDATE SKIP LOCKED`` (replicas never publish the same row at once), publishes
each with ``Nats-Msg-Id`` = outbox.msg_id and marks it published. When NATS is down the rows
simply stay pending, with the error and attempt count recorded, and go out once it is back; a
row published but not yet marked (a crash in between) is published again and JetStream's
duplicate window drops the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, NotFoundError
from opentelemetry.trace import SpanKind

from polydub.api.db import outbox as outbox_db
from polydub.infra.queue import jobs_stream_config
from polydub.retry import Backoff
from polydub.settings import Settings
from polydub.telemetry.propagation import extract_context, inject_headers
from polydub.telemetry.tracing import span

log = logging.getLogger("polydub.api.outbox")

NatsGetter = Callable[[], Awaitable[NATS | None]]


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, nats: NatsGetter, settings: Settings) -> None:
        self.pool = pool
        self.nats = nats
        self.settings = settings
        self._wake = asyncio.Event()
        self._stream_ready = False

    def wake(self) -> None:
        """A new row was committed: publish now rather than at the next poll."""
        self._wake.set()

    async def _ensure_stream(self, nc: NATS) -> None:
        # The stream only: the consumer belongs to the workers and their policy.
        js = nc.jetstream()
        try:
            await js.stream_info(self.settings.jobs_stream)
        except NotFoundError:
            await js.add_stream(jobs_stream_config(self.settings))
        self._stream_ready = True

    async def publish_pending(self, batch: int = 100) -> int:
        """One pass; returns how many rows were published. A row JetStream refuses (no stream
        takes its subject) is recorded and passed over, so it never holds back the rows behind
        it; a timeout or a lost connection ends the pass, as the next rows would fail alike."""
        nc = await self.nats()
        if nc is None or not nc.is_connected:
            return 0
        if not self._stream_ready:
            await self._ensure_stream(nc)
        js = nc.jetstream()
        published = 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await outbox_db.lock_pending(conn, batch)
            done: list[int] = []
            for row in rows:
                try:
                    await self._publish(js, row)
                except Exception as exc:
                    await outbox_db.record_failure(
                        conn, row["id"], f"{type(exc).__name__}: {exc}"[:500]
                    )
                    self._stream_ready = False  # maybe it was deleted: check again next time
                    log.warning(
                        "outbox publish failed; will retry",
                        extra={"msg_id": row["msg_id"], "error": str(exc)},
                    )
                    if isinstance(exc, NoRespondersError | NoStreamResponseError):
                        continue
                    break
                done.append(row["id"])
            if done:
                await outbox_db.mark_published(conn, done)
                published = len(done)
        return published

    async def _publish(self, js: JetStreamContext, row: asyncpg.Record) -> None:
        # A producer span under the submitting request's span (its context is in the row), and
        # the message carries this span's context on to the worker.
        stored = row["headers"] or {}
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "publish",
            "messaging.destination.name": row["subject"],
            "messaging.message.id": row["msg_id"],
            "polydub.job_id": (row["payload"] or {}).get("job_id"),
        }
        with span(
            f"publish {row['subject']}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            context=extract_context(stored),
        ):
            headers = inject_headers({**stored, "Nats-Msg-Id": row["msg_id"]})
            await js.publish(
                row["subject"],
                json.dumps(row["payload"]).encode(),
                headers=headers,
                timeout=self.settings.api_outbox_publish_timeout_seconds,
            )

    async def run(self) -> None:
        """Until cancelled: publish whenever woken, at least every poll interval (longer while
        passes keep failing)."""
        backoff = Backoff(self.settings.api_outbox_poll_seconds, 5.0)
        failures = 0
        while True:
            try:
                count = await self.publish_pending()
                failures = 0
                if count:
                    continue  # there may be more
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay pass failed", extra={"error": str(exc)})
                failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff.delay(failures + 1))
            self._wake.clear()
