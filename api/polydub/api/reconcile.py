"""The reconciler: jobs left ``queued`` or ``running`` with no live queue message are republished
or failed with a reason, on a schedule, exactly once.

How a job gets stuck: the last delivery dies with its worker and the MaxDeliveries advisory
(the worker's way of failing it) is lost because no worker listened at that moment; a message
deleted or lost with the stream; a claim that kept failing. Such a job shows no change in
PostgreSQL for ``reconcile_stale_seconds`` (a healthy worker writes progress at least every
``stall_seconds``, and a job waiting for redelivery waits an ack wait or a retry delay), and
the stream holds no message for it that a worker will still get.

Per stale job of this replica's queue subject, with the stream read once per pass:

=====================================  ===============================================
what the stream holds for the job      what the reconciler does
=====================================  ===============================================
cancel requested (anything)            cancelled
a message not yet delivered            nothing: it is waiting for a worker
delivered messages only, and the job   failed, ``worker_lost`` (what the advisory would
claimed MaxDeliver times since queued  have done); the dead message is deleted
delivered messages only, fewer claims  republished (the old message deleted)
no message (the whole stream read)     republished
republished max_republishes times      failed, ``stuck_job``
=====================================  ===============================================

Republishing goes through the outbox (a new row in the transaction that puts the job back to
``queued``). Exactly once: a pass runs under a PostgreSQL advisory lock (one replica at a time),
and every change is a compare-and-set on the (status, attempt, updated_at) it read, so a worker
that claims the job meanwhile wins, and a second pass finds the job fresh and leaves it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from polydub.api.db import reconcile as reconcile_db
from polydub.api.outbox import NatsGetter
from polydub.errors import InvalidInput, PermanentError
from polydub.infra.db import session_lock
from polydub.infra.queue import WORKER_CONSUMER, ConsumerPolicy
from polydub.jobs import JobMessage, JobStatus, publish_event
from polydub.settings import Settings

log = logging.getLogger("polydub.api.reconcile")


@dataclass(frozen=True)
class QueueView:
    """What the jobs stream holds for the jobs asked about, read once per pass."""

    messages: dict[uuid.UUID, list[int]]  # job -> stream sequences of its messages
    delivered_seq: int  # the highest sequence the workers' consumer delivered (0: none)
    max_deliver: int
    complete: bool  # every message of the stream was read


@dataclass(frozen=True)
class ReconcileReport:
    republished: int
    failed: int
    cancelled: int
    waiting: int  # a message still waits for a worker
    unknown: int  # the stream was too long to read whole: decided next pass


async def read_queue(
    js: JetStreamContext, settings: Settings, wanted: set[uuid.UUID], limit: int
) -> QueueView:
    stream = settings.jobs_stream
    try:
        consumer = await js.consumer_info(stream, WORKER_CONSUMER)
        delivered = consumer.delivered.stream_seq if consumer.delivered else 0
        max_deliver = consumer.config.max_deliver or ConsumerPolicy().max_deliver
    except NotFoundError:  # no worker ever attached: nothing was delivered
        delivered, max_deliver = 0, ConsumerPolicy().max_deliver
    state = (await js.stream_info(stream)).state
    messages: dict[uuid.UUID, list[int]] = {}
    seq, read, complete = state.first_seq, 0, True
    while state.messages and seq <= state.last_seq:
        if read >= limit:
            complete = False
            break
        try:  # the next message present at or after seq (a work queue has gaps)
            msg = await js.get_msg(stream, seq, subject=settings.jobs_subject, next=True)
        except NotFoundError:
            break
        read += 1
        with contextlib.suppress(InvalidInput):
            job_id = JobMessage.from_bytes(msg.data).job_id
            if job_id in wanted:
                messages.setdefault(job_id, []).append(msg.seq or seq)
        seq = (msg.seq or seq) + 1
    return QueueView(messages, delivered or 0, max_deliver, complete)


class Reconciler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        nats: NatsGetter,
        settings: Settings,
        *,
        wake: Callable[[], None] | None = None,
        batch: int = 100,
        scan_limit: int = 20_000,
    ) -> None:
        self.pool = pool
        self.nats = nats
        self.settings = settings
        self.wake = wake  # the outbox relay's: publish a republished job now
        self.batch = batch
        self.scan_limit = scan_limit

    async def run(self) -> None:
        """Until cancelled: one pass per interval (the first after one interval)."""
        while True:
            await asyncio.sleep(self.settings.reconcile_interval_seconds)
            try:
                report = await self.run_once()
                if report and (report.republished or report.failed or report.cancelled):
                    log.warning("reconciled stuck jobs", extra=report.__dict__)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reconcile pass failed", extra={"error": str(exc)})

    async def run_once(self) -> ReconcileReport | None:
        """One pass; None when another replica holds the lock or NATS is not connected (the
        stream cannot be read, so nothing can be told apart from a job waiting its turn)."""
        nc = await self.nats()
        if nc is None or not nc.is_connected:
            return None
        async with session_lock(
            self.pool, reconcile_db.try_lock, reconcile_db.release_lock
        ) as taken:
            return await self._pass(nc.jetstream(), nc) if taken else None

    async def _pass(self, js: JetStreamContext, nc: NATS) -> ReconcileReport:
        settings = self.settings
        jobs = await reconcile_db.stale_jobs(
            self.pool, settings.jobs_subject, settings.reconcile_stale_seconds, self.batch
        )
        counts = {"republished": 0, "failed": 0, "cancelled": 0, "waiting": 0, "unknown": 0}
        if not jobs:
            return ReconcileReport(**counts)
        view = await read_queue(js, settings, {j.id for j in jobs}, self.scan_limit)
        for job in jobs:
            seqs = view.messages.get(job.id, [])
            waiting = any(seq > view.delivered_seq for seq in seqs)
            if job.cancel_requested:
                event = await reconcile_db.finish(self.pool, job, JobStatus.CANCELLED, None)
                outcome = "cancelled"
            elif waiting:
                counts["waiting"] += 1
                continue
            elif seqs and job.claims >= view.max_deliver:
                error = PermanentError(
                    f"gave up after {job.claims} deliveries: the worker running the job "
                    "stopped each time (killed, out of memory or stalled) before it finished",
                    code="worker_lost",
                )
                event = await reconcile_db.finish(self.pool, job, JobStatus.FAILED, error)
                outcome = "failed"
            elif not seqs and not view.complete:
                counts["unknown"] += 1
                continue
            elif job.reconciled >= settings.reconcile_max_republishes:
                error = PermanentError(
                    f"no worker finished the job after {job.reconciled} republishes",
                    code="stuck_job",
                )
                event = await reconcile_db.finish(self.pool, job, JobStatus.FAILED, error)
                outcome = "failed"
            else:
                reason = "no live queue message" if not seqs else "delivered, never finished"
                event = await reconcile_db.republish(self.pool, settings, job, reason)
                outcome = "republished"
            if event is None:
                continue  # changed since it was read: a worker or another pass got there first
            counts[outcome] += 1
            log.warning(
                f"stuck job {outcome}",
                extra={"job_id": str(job.id), "status": job.status, "claims": job.claims},
            )
            for seq in seqs:  # dead or superseded: never delivered again
                with contextlib.suppress(Exception):
                    await js.delete_msg(settings.jobs_stream, seq)
            await publish_event(nc, settings, job.id, event)
        if counts["republished"] and self.wake is not None:
            self.wake()
        return ReconcileReport(**counts)
