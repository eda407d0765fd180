"""Fenced object writes, against real PostgreSQL, NATS and S3: a worker stalled past the ack wait
wakes up and uploads its output after a newer attempt finished the job. S3 takes the upload
(objects are not fenced), but it lands under the stale attempt's own key: the artifact row, the
stage record and so every download still name the newer attempt's bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from polydub.errors import ServiceUnavailable
from polydub.infra.queue import ConsumerPolicy, connect, ensure_jobs_stream
from polydub.infra.storage import ObjectStore
from polydub.jobs import ArtifactKind, JobMessage
from polydub.orchestrator.pipeline import PipelineRunner, Stage, StageContext, StageResult
from polydub.orchestrator.state import JobStore
from polydub.orchestrator.worker import Worker, WorkerOptions
from polydub.settings import Settings
from tests.factories import create_job, create_owner

pytestmark = pytest.mark.integration

POLICY = ConsumerPolicy(ack_wait_seconds=1.5, max_deliver=3)


@dataclass
class Muxer:
    """A toy mux stage that uploads ``attempt <n>`` and registers it as the dubbed video; the
    stale one waits at ``gate`` between making its output and uploading it."""

    store: ObjectStore
    jobs: JobStore
    gate: asyncio.Event | None = None
    fail_with: Exception | None = None  # raised instead of uploading, once through the gate
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    uploaded: list[str] = field(default_factory=list)

    async def extract(self, ctx: StageContext) -> StageResult:
        return StageResult({"key": ctx.key("extract.json")})

    async def mux(self, ctx: StageContext) -> StageResult:
        data = f"attempt {ctx.job.attempt}".encode()
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        key = ctx.key("dubbed.mp4")
        await self.store.put_bytes(key, data, "video/mp4")
        self.uploaded.append(key)
        digest = hashlib.sha256(data).hexdigest()
        await self.jobs.add_artifact(
            ctx.job, ctx.language, ArtifactKind.DUBBED_VIDEO, key, "video/mp4", len(data), digest
        )
        return StageResult({ArtifactKind.DUBBED_VIDEO: key})

    def stages(self) -> list[Stage]:
        return [Stage("extract", "job", self.extract), Stage("mux", "target", self.mux)]


@dataclass(frozen=True)
class Env:
    settings: Settings
    nc: NATS
    js: JetStreamContext


@pytest.fixture
async def env(services: object, stack_settings: Settings) -> AsyncIterator[Env]:
    stream = f"FENCE_{uuid.uuid4().hex[:8]}"
    settings = stack_settings.model_copy(
        update={"jobs_stream": stream, "jobs_subject": f"{stream}.jobs"}
    )
    nc = await connect(settings)
    js = nc.jetstream()
    await ensure_jobs_stream(js, settings, POLICY)
    yield Env(settings, nc, js)
    await js.delete_stream(stream)
    await nc.close()


def make_worker(env: Env, jobs: JobStore, muxer: Muxer, tmp: Path, stall: float) -> Worker:
    options = WorkerOptions(
        concurrency=1, drain_seconds=1, stall_seconds=stall, retry_base_delay=0.1, policy=POLICY
    )
    worker: Worker

    def runner() -> PipelineRunner:
        # The toy stages use no services.
        return PipelineRunner(muxer.stages(), jobs, None, worker.publish, tmp)  # type: ignore[arg-type]

    worker = Worker(env.settings, env.nc, env.js, jobs, runner, options)
    return worker


async def test_a_stale_attempts_late_upload_is_never_what_the_job_serves(
    env: Env, db_pool: asyncpg.Pool, stack_settings: Settings, tmp_path: Path
) -> None:
    store, jobs = ObjectStore(stack_settings), JobStore(db_pool)
    job_id = await create_job(db_pool, await create_owner(db_pool), ["fra"])
    stale_muxer = Muxer(store, jobs, gate=asyncio.Event())
    stale = make_worker(env, jobs, stale_muxer, tmp_path / "a", stall=0.1)  # stops heartbeating
    stale_task = asyncio.create_task(stale.run())
    message = JobMessage(job_id)
    await env.js.publish(
        env.settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )
    await asyncio.wait_for(stale_muxer.entered.wait(), 10)

    # Redelivered after the ack wait, the job is finished by a fresh worker (attempt 2).
    fresh_muxer = Muxer(store, jobs)
    fresh = make_worker(env, jobs, fresh_muxer, tmp_path / "b", stall=600)
    fresh_task = asyncio.create_task(fresh.run())

    for _ in range(300):
        if await db_pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "succeeded":
            break
        await asyncio.sleep(0.05)
    [fresh_key] = fresh_muxer.uploaded

    # The stale worker wakes up: its upload goes through, its artifact row is fenced out.
    stale_muxer.gate.set()  # type: ignore[union-attr]
    for _ in range(100):
        if stale_muxer.uploaded and not stale.in_flight:
            break
        await asyncio.sleep(0.05)
    [stale_key] = stale_muxer.uploaded
    assert not stale.in_flight  # dropped the job (fenced) instead of acking it

    row = await db_pool.fetchrow(
        "SELECT object_key, sha256, size_bytes FROM artifacts WHERE job_id = $1", job_id
    )
    served = await store.get_bytes(row["object_key"])
    assert served == b"attempt 2"
    assert hashlib.sha256(served).hexdigest() == row["sha256"] and len(served) == row["size_bytes"]
    recorded = await db_pool.fetchrow(
        "SELECT attempt, outputs FROM job_stages WHERE job_id = $1 AND stage = 'mux'", job_id
    )
    assert recorded["attempt"] == 2
    assert recorded["outputs"] == {ArtifactKind.DUBBED_VIDEO: fresh_key}
    assert stale_key != fresh_key and "/a1/" in stale_key and "/a2/" in fresh_key
    assert await store.get_bytes(stale_key) == b"attempt 1"  # S3 took it, but nothing names it

    for worker, task in ((stale, stale_task), (fresh, fresh_task)):
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_a_stale_attempt_that_wakes_to_an_error_hands_nothing_back(
    env: Env,
    db_pool: asyncpg.Pool,
    stack_settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stalled past its Triton deadline, a worker wakes to a retryable error, not a fenced
    write: it must see that a newer attempt owns the job and drop it, not nak it."""
    caplog.set_level(logging.INFO, logger="polydub.orchestrator.worker")
    store, jobs = ObjectStore(stack_settings), JobStore(db_pool)
    job_id = await create_job(db_pool, await create_owner(db_pool), ["fra"])
    expired = ServiceUnavailable("deadline ran out while stalled", code="triton_deadline_exceeded")
    stale_muxer = Muxer(store, jobs, gate=asyncio.Event(), fail_with=expired)
    stale = make_worker(env, jobs, stale_muxer, tmp_path / "a", stall=0.1)
    stale_task = asyncio.create_task(stale.run())
    message = JobMessage(job_id)
    await env.js.publish(
        env.settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )
    await asyncio.wait_for(stale_muxer.entered.wait(), 10)
    fresh = make_worker(env, jobs, Muxer(store, jobs), tmp_path / "b", stall=600)
    fresh_task = asyncio.create_task(fresh.run())
    for _ in range(300):
        if await db_pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "succeeded":
            break
        await asyncio.sleep(0.05)

    stale_muxer.gate.set()  # type: ignore[union-attr]
    for _ in range(100):
        if not stale.in_flight:
            break
        await asyncio.sleep(0.05)
    assert not stale.in_flight
    messages = [(r.getMessage(), getattr(r, "reason", "")) for r in caplog.records]
    assert ("fenced out; dropping the job without ack",
            "superseded by a newer attempt (triton_deadline_exceeded)") in messages  # fmt: skip
    assert not any(m == "retryable error; nak" for m, _ in messages), messages
    row = await db_pool.fetchrow("SELECT status, attempt FROM jobs WHERE id = $1", job_id)
    assert (row["status"], row["attempt"]) == ("succeeded", 2)

    for worker, task in ((stale, stale_task), (fresh, fresh_task)):
        worker.stop()
        await asyncio.wait_for(task, 10)
