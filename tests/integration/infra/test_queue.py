import asyncio
import uuid

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy

from polydub.infra.queue import (
    WORKER_CONSUMER,
    ConsumerPolicy,
    connect,
    ensure_jobs_stream,
    jobs_stream_config,
)
from polydub.settings import Settings
from polydub.stack import Stack

pytestmark = pytest.mark.integration


async def test_work_queue_round_trip_ack_and_redelivery(
    services: Stack, stack_settings: Settings
) -> None:
    # A private stream so this test does not share messages with others.
    settings = stack_settings.model_copy(
        update={"jobs_stream": "TEST_RT", "jobs_subject": "test.rt"}
    )
    nc = await connect(settings)
    try:
        js = nc.jetstream()
        await ensure_jobs_stream(js, settings, ConsumerPolicy(ack_wait_seconds=1.0, max_deliver=3))
        info = await js.stream_info("TEST_RT")
        assert RetentionPolicy(info.config.retention) is RetentionPolicy.WORK_QUEUE

        first, second = (str(uuid.uuid4()) for _ in range(2))
        ack = await js.publish("test.rt", first.encode(), headers={"Nats-Msg-Id": first})
        dup = await js.publish("test.rt", first.encode(), headers={"Nats-Msg-Id": first})
        assert dup.duplicate is True and dup.seq == ack.seq  # the outbox relay may republish safely
        await js.publish("test.rt", second.encode(), headers={"Nats-Msg-Id": second})

        sub = await js.pull_subscribe_bind(WORKER_CONSUMER, stream="TEST_RT")
        msgs = await sub.fetch(2, timeout=5)
        assert [m.data.decode() for m in msgs] == [first, second]
        await msgs[0].ack_sync()
        # msgs[1] is left unacked: after ack_wait it comes back, marked as a second delivery.
        again = await sub.fetch(1, timeout=5)
        assert again[0].data.decode() == second
        assert again[0].metadata.num_delivered == 2
        await again[0].ack_sync()

        await asyncio.sleep(0.2)
        info = await js.stream_info("TEST_RT")
        assert info.state.messages == 0  # work-queue retention: acked messages are gone
    finally:
        await nc.jetstream().delete_stream("TEST_RT")
        await nc.close()


async def test_in_progress_extends_the_ack_deadline(
    services: Stack, stack_settings: Settings
) -> None:
    settings = stack_settings.model_copy(
        update={"jobs_stream": "TEST_HB", "jobs_subject": "test.hb"}
    )
    nc = await connect(settings)
    try:
        js = nc.jetstream()
        await ensure_jobs_stream(js, settings, ConsumerPolicy(ack_wait_seconds=1.0))
        await js.publish("test.hb", b"long job")
        sub = await js.pull_subscribe_bind(WORKER_CONSUMER, stream="TEST_HB")
        (msg,) = await sub.fetch(1, timeout=5)
        for _ in range(4):  # 2 s of work with a 1 s ack wait, kept alive by heartbeats
            await asyncio.sleep(0.5)
            await msg.in_progress()
        with pytest.raises(asyncio.TimeoutError):
            await sub.fetch(1, timeout=0.5)  # nothing redelivered meanwhile
        await msg.ack_sync()
    finally:
        await nc.jetstream().delete_stream("TEST_HB")
        await nc.close()


def test_stream_config_is_a_deduplicating_work_queue() -> None:
    config = jobs_stream_config(Settings())
    assert config.retention is RetentionPolicy.WORK_QUEUE
    assert config.duplicate_window == 600.0
    consumer = ConsumerConfig(durable_name=WORKER_CONSUMER, ack_policy=AckPolicy.EXPLICIT)
    assert consumer.ack_policy == AckPolicy.EXPLICIT
