"""A stateless worker: a pull consumer on the JOBS work queue, running jobs through the pipeline.

Delivery rules (see polydub.errors for the classification):
- success, a terminal job, or a cancel: ack;
- a retryable error: nak with a growing delay, until MaxDeliver; the last try fails the job;
- a permanent error: the job fails with its reason, and the message is term()'d;
- fenced out by a newer attempt: neither ack nor nak (the newer delivery owns the message);
- the last delivery lost with its worker (killed, OOM, stalled past the ack wait): JetStream
  stops redelivering and publishes a MaxDeliveries advisory; any worker hearing it fails the job
  (``worker_lost``), so it never stays 'running' with no message left to run it.
While a job runs, a heartbeat task calls in_progress() so the ack wait never lapses; it stops if
the job makes no progress for ``stall_seconds`` so that a wedged worker loses the job.
SIGTERM: stop fetching, let running jobs finish for ``drain_seconds``, nak the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from polydub.errors import InvalidInput, PermanentError, classify
from polydub.infra.queue import WORKER_CONSUMER, ConsumerPolicy
from polydub.jobs import JobMessage, publish_event
from polydub.logging import log_context
from polydub.orchestrator.pipeline import PipelineRunner
from polydub.orchestrator.state import Cancelled, Fenced, JobRecord, JobStore
from polydub.retry import Backoff
from polydub.settings import Settings
from polydub.telemetry.metrics import JOBS_IN_FLIGHT, job_transition
from polydub.telemetry.propagation import extract_context
from polydub.telemetry.tracing import mark_error, span

log = logging.getLogger(__name__)

# Published by JetStream when a message reaches the consumer's MaxDeliver without an ack.
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 2  # jobs at once per worker process: their model calls share batches
    drain_seconds: float = 30.0
    stall_seconds: float = 600.0
    retry_base_delay: float = 2.0
    retry_max_delay: float = 60.0
    policy: ConsumerPolicy = field(default_factory=ConsumerPolicy)

    def retry_delay(self, delivered: int) -> float:
        return Backoff(self.retry_base_delay, self.retry_max_delay).delay(delivered)


class Worker:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        js: JetStreamContext,
        store: JobStore,
        runner_factory: Callable[[], PipelineRunner],
        options: WorkerOptions = WorkerOptions(),
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.store = store
        self.runner_factory = runner_factory
        self.options = options
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()

    async def publish(self, job: JobRecord, event: dict[str, Any]) -> None:
        await publish_event(self.nc, self.settings, job.id, event)

    async def run(self) -> None:
        sub = await self.js.pull_subscribe_bind(WORKER_CONSUMER, stream=self.settings.jobs_stream)
        # A job whose last delivery dies with its worker (kill -9, OOM, a stall) is never
        # redelivered, and no worker is left to fail it: JetStream only says so in an advisory.
        advisories = await self.nc.subscribe(
            MAX_DELIVERIES_ADVISORY.format(
                stream=self.settings.jobs_stream, consumer=WORKER_CONSUMER
            ),
            cb=self._on_max_deliveries,
        )
        try:
            await self._consume(sub)
        finally:
            # Unsubscribed, the connection's drain on shutdown returns at once instead of
            # waiting out its timeout on a pull subscription nobody fetches from.
            for subscription in (advisories, sub):
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
        await self.drain()

    async def _consume(self, sub: Any) -> None:
        slots = asyncio.Semaphore(self.options.concurrency)
        while await self._free_slot(slots):
            try:
                msgs = await sub.fetch(1, timeout=1.0)
            except Exception:  # timeout with no message, or NATS reconnecting
                slots.release()
                continue
            for msg in msgs:
                task = asyncio.create_task(self.handle(msg))
                self.in_flight.add(task)

                def done(finished: asyncio.Task[None]) -> None:
                    self.in_flight.discard(finished)
                    slots.release()

                task.add_done_callback(done)

    async def _free_slot(self, slots: asyncio.Semaphore) -> bool:
        """Wait for room for one more job; False once stopping (even while every slot is busy,
        so that SIGTERM reaches drain() instead of waiting for a job to end)."""
        acquire = asyncio.ensure_future(slots.acquire())
        stopping = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({acquire, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not self.stopping.is_set():
            return True
        if acquire.done() and not acquire.cancelled():
            slots.release()
        else:
            acquire.cancel()
        return False

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """Fail a job JetStream gave up on (every worker of the stream hears this; the first
        to commit the terminal state wins, the others change nothing)."""
        try:
            info = json.loads(advisory.data)
            seq = int(info["stream_seq"])
            stored = await self.js.get_msg(self.settings.jobs_stream, seq)
            job_id = JobMessage.from_bytes(stored.data).job_id
        except Exception as exc:
            log.warning("unreadable max-deliveries advisory", extra={"error": str(exc)})
            return
        error = PermanentError(
            f"gave up after {info.get('deliveries')} deliveries: the worker running the job "
            "stopped each time (killed, out of memory or stalled) before it finished",
            code="worker_lost",
        )
        with log_context(job_id=str(job_id)):
            try:
                event = await self.store.finish_job(job_id, "failed", error, fenced=False)
            except Exception as exc:  # the message stays: the API's reconciler fails it later
                log.error("could not fail a job past max deliveries", extra={"error": str(exc)})
                return
            if event:
                log.error("job failed", extra={"code": error.code, "error": error.message})
                await publish_event(self.nc, self.settings, job_id, event)
            with contextlib.suppress(Exception):  # another worker may have deleted it first
                await self.js.delete_msg(self.settings.jobs_stream, seq)

    async def drain(self) -> None:
        if not self.in_flight:
            return
        log.info("draining", extra={"jobs": len(self.in_flight)})
        _, pending = await asyncio.wait(self.in_flight, timeout=self.options.drain_seconds)
        for task in pending:
            task.cancel()  # handle() naks on cancellation so another worker resumes it now
        if pending:
            await asyncio.wait(pending, timeout=5)

    def stop(self) -> None:
        self.stopping.set()

    async def handle(self, msg: Msg) -> None:
        try:
            job_id = JobMessage.from_bytes(msg.data).job_id
        except InvalidInput:
            log.error(
                "malformed job message; terminating it",
                extra={"data": msg.data[:200].decode(errors="replace")},
            )
            await msg.term()
            return
        # One span per delivery, continuing the trace the API started (context in the headers).
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": msg.subject,
            "messaging.consumer.group.name": WORKER_CONSUMER,
            "messaging.message.id": (msg.headers or {}).get("Nats-Msg-Id"),
            "polydub.job_id": str(job_id),
            "polydub.delivery": msg.metadata.num_delivered,
        }
        JOBS_IN_FLIGHT.inc()
        try:
            with (
                span(
                    "job.run",
                    kind=SpanKind.CONSUMER,
                    attributes=attributes,
                    context=extract_context(msg.headers),
                ),
                log_context(job_id=str(job_id), delivery=msg.metadata.num_delivered),
            ):
                await self._handle_job(msg, job_id)
        finally:
            JOBS_IN_FLIGHT.dec()

    async def _handle_job(self, msg: Msg, job_id: uuid.UUID) -> None:
        progress_clock = [time.monotonic()]
        heartbeat = asyncio.create_task(self._heartbeat(msg, progress_clock))
        job: JobRecord | None = None
        try:
            job = await self.store.claim(job_id)
            if job is None:
                await msg.ack()  # already terminal: a duplicate or late delivery
                return
            with log_context(attempt=job.attempt):
                if await self.store.cancel_requested(job.id):
                    raise Cancelled("cancelled before start")
                runner = self.runner_factory()
                original_publish = runner.publish

                async def publish(j: JobRecord, event: dict[str, Any]) -> None:
                    progress_clock[0] = time.monotonic()
                    await original_publish(j, event)

                runner.publish = publish
                log.info("job started")
                await runner.run(job)
                log.info("job finished")
            await msg.ack()
        except Fenced as exc:
            log.warning("fenced out; dropping the job without ack", extra={"reason": str(exc)})
        except Cancelled:
            assert job is not None
            event = await self.store.finish_job(job, "cancelled")
            if event:
                await self.publish(job, event)
            await msg.ack()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()  # draining on SIGTERM: hand the job back at once
            raise
        except Exception as exc:
            await self._on_error(msg, job_id, job, exc)
        finally:
            heartbeat.cancel()

    async def _on_error(
        self, msg: Msg, job_id: uuid.UUID, job: JobRecord | None, exc: Exception
    ) -> None:
        error = classify(exc)
        mark_error(exc)
        if job is not None and await self._superseded(job):
            # A worker that stalled past the ack wait (SIGSTOP, a long GC pause, a frozen VM)
            # often wakes to an error of its own (its Triton deadline ran out while it slept)
            # rather than a fenced write: the job is a newer attempt's, so hand nothing back.
            log.warning(
                "fenced out; dropping the job without ack",
                extra={"reason": f"superseded by a newer attempt ({error.code})"},
            )
            return
        delivered = msg.metadata.num_delivered
        last_try = delivered >= self.options.policy.max_deliver
        if error.retryable and not last_try:
            delay = self.options.retry_delay(delivered)
            log.warning(
                "retryable error; nak",
                extra={"code": error.code, "error": error.message, "delay": delay},
            )
            await msg.nak(delay=delay)
            job_transition("retried")
            return
        if error.retryable:
            error = type(error)(
                f"gave up after {delivered} attempts: {error.message}", code=error.code
            )
        log.error("job failed", extra={"code": error.code, "error": error.message})
        try:
            event = await self.store.finish_job(
                job or job_id, "failed", error, fenced=job is not None
            )
        except Fenced:
            return
        if event and job is not None:
            await self.publish(job, event)
        await msg.term()

    async def _superseded(self, job: JobRecord) -> bool:
        try:
            return await self.store.superseded(job)
        except Exception:  # the database may be the error: decide as if still ours
            return False

    async def _heartbeat(self, msg: Msg, progress_clock: list[float]) -> None:
        interval = max(self.options.policy.ack_wait_seconds / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - progress_clock[0] > self.options.stall_seconds:
                log.error("no progress; stopping heartbeats so the job is redelivered")
                return
            with contextlib.suppress(Exception):
                await msg.in_progress()
