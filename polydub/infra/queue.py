"""NATS JetStream: the JOBS work-queue stream, its worker consumer, and progress subjects.

The stream uses work-queue retention (a message is deleted once acked), file storage, and a
duplicate window so that ``Nats-Msg-Id`` = job id makes a republish by the outbox relay harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from polydub.settings import Settings

WORKER_CONSUMER = "workers"

log = logging.getLogger("polydub.queue")


@dataclass(frozen=True)
class ConsumerPolicy:
    ack_wait_seconds: float = 60.0  # a worker heartbeats with in_progress() well inside this
    max_deliver: int = 5  # then the job fails with its last reason
    max_ack_pending: int = 1000


async def _connection_error(error: Exception) -> None:
    # NATS being away is foreseeable (a restart, a slow start): one line, no traceback, which
    # is what nats-py's default callback prints.
    log.warning("NATS connection error", extra={"error": f"{type(error).__name__}: {error}"})


async def connect(settings: Settings, *, name: str = "polydub") -> NATS:
    return await nats.connect(
        settings.nats_url,
        name=name,
        # Keep reconnecting through a NATS restart instead of giving up after a few tries.
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=_connection_error,
    )


def jobs_stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=settings.jobs_stream,
        subjects=[settings.jobs_subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=settings.jobs_stream_replicas,
        duplicate_window=600.0,
    )


def worker_consumer_config(policy: ConsumerPolicy = ConsumerPolicy()) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=WORKER_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=policy.ack_wait_seconds,
        max_deliver=policy.max_deliver,
        max_ack_pending=policy.max_ack_pending,
    )


async def ensure_jobs_stream(
    js: JetStreamContext, settings: Settings, policy: ConsumerPolicy = ConsumerPolicy()
) -> None:
    """Create or update the JOBS stream and the shared durable pull consumer of the workers."""
    config = jobs_stream_config(settings)
    try:
        await js.stream_info(settings.jobs_stream)
        await js.update_stream(config)
    except NotFoundError:
        await js.add_stream(config)
    await js.add_consumer(settings.jobs_stream, worker_consumer_config(policy))


def progress_subject(settings: Settings, job_id: str) -> str:
    return f"{settings.progress_subject_prefix}.{job_id}"
