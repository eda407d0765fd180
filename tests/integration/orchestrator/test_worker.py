"""The worker and the pipeline runner against real PostgreSQL and NATS, with toy stages.

The real stages are tested elsewhere; here the stages only count their calls and fail on cue,
so each delivery rule (resume, fencing, MaxDeliver, cancel, drain) is checked exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from polydub.errors import InvalidInput, ServiceUnavailable
from polydub.infra.queue import ConsumerPolicy, connect, ensure_jobs_stream
from polydub.jobs import JobMessage
from polydub.orchestrator.pipeline import PipelineRunner, Stage, StageContext, StageResult
from polydub.orchestrator.state import JobStore
from polydub.orchestrator.worker import Worker, WorkerOptions
from polydub.settings import Settings
from tests.factories import create_job, create_owner

pytestmark = pytest.mark.integration


@dataclass
class Script:
    """What the toy stages do: count calls, fail on cue, wait on cue."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    fail: dict[tuple[str, str], list[Exception]] = field(default_factory=dict)
    gate: asyncio.Event | None = None  # the "slow" stage waits for it
    entered_slow: asyncio.Event = field(default_factory=asyncio.Event)

    def stage(self, name: str, scope: str) -> Stage:
        async def run(ctx: StageContext) -> StageResult:
            self.calls[(name, ctx.language)] += 1
            queue = self.fail.get((name, ctx.language))
            if queue:
                raise queue.pop(0)
            if name == "slow":
                self.entered_slow.set()
                if self.gate is not None:
                    await self.gate.wait()
            await ctx.report(1, 2)
            return StageResult(
                {"key": ctx.key(f"{name}.json")}, {"calls": self.calls[(name, ctx.language)]}
            )

        return Stage(name, scope, run)  # type: ignore[arg-type]

    def stages(self) -> list[Stage]:
        return [
            self.stage("extract", "job"),
            self.stage("slow", "job"),
            self.stage("translate", "target"),
            self.stage("mux", "target"),
        ]


@pytest.fixture
async def env(
    services: object, db_pool: asyncpg.Pool, stack_settings: Settings
) -> AsyncIterator[dict[str, object]]:
    stream = f"TJOBS_{uuid.uuid4().hex[:8]}"
    settings = stack_settings.model_copy(
        update={"jobs_stream": stream, "jobs_subject": f"{stream}.jobs"}
    )
    nc = await connect(settings)
    js = nc.jetstream()
    policy = ConsumerPolicy(ack_wait_seconds=1.5, max_deliver=3)
    await ensure_jobs_stream(js, settings, policy)
    yield {"settings": settings, "nc": nc, "js": js, "policy": policy}
    await js.delete_stream(stream)
    await nc.close()


def make_worker(env: dict[str, object], pool: asyncpg.Pool, script: Script, tmp: Path) -> Worker:
    settings = env["settings"]
    assert isinstance(settings, Settings)
    store = JobStore(pool)
    options = WorkerOptions(
        concurrency=2,
        drain_seconds=0.5,
        retry_base_delay=0.1,
        retry_max_delay=0.2,
        policy=env["policy"],  # type: ignore[arg-type]
    )
    worker: Worker

    def runner() -> PipelineRunner:
        # The toy stages use no services.
        return PipelineRunner(script.stages(), store, None, worker.publish, tmp)  # type: ignore[arg-type]

    worker = Worker(settings, env["nc"], env["js"], store, runner, options)  # type: ignore[arg-type]
    return worker


async def submit(env: dict[str, object], pool: asyncpg.Pool, targets: list[str]) -> uuid.UUID:
    settings = env["settings"]
    assert isinstance(settings, Settings)
    job_id = await create_job(pool, await create_owner(pool), targets)
    message = JobMessage(job_id)
    await env["js"].publish(  # type: ignore[attr-defined]
        settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )
    return job_id


async def wait_terminal(pool: asyncpg.Pool, job_id: uuid.UUID, limit: float = 15) -> asyncpg.Record:
    async def poll() -> asyncpg.Record:
        while True:
            row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
            if row["status"] in ("succeeded", "failed", "cancelled"):
                return row
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), limit)


async def running(worker: Worker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run())


async def stop(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, 10)


async def test_job_succeeds_with_every_stage_recorded_and_events(env, db_pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = Script()
    worker = make_worker(env, db_pool, script, tmp_path)
    task = await running(worker)
    job_id = await submit(env, db_pool, ["fra", "spa"])
    progress = await env["nc"].subscribe(f"progress.{job_id}")
    job = await wait_terminal(db_pool, job_id)
    await stop(worker, task)

    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["attempt"] == 1
    stages = await db_pool.fetch(
        "SELECT stage, language, status, outputs FROM job_stages WHERE job_id=$1 ORDER BY 1, 2",
        job_id,
    )
    assert [(r["stage"], r["language"], r["status"]) for r in stages] == [
        ("extract", "", "succeeded"),
        ("mux", "fra", "succeeded"),
        ("mux", "spa", "succeeded"),
        ("slow", "", "succeeded"),
        ("translate", "fra", "succeeded"),
        ("translate", "spa", "succeeded"),
    ]
    assert stages[1]["outputs"] == {"key": f"jobs/{job_id}/mux/fra/a1/mux.json"}  # attempt 1's
    assert dict(script.calls) == {
        ("extract", ""): 1,
        ("slow", ""): 1,
        ("translate", "fra"): 1,
        ("translate", "spa"): 1,
        ("mux", "fra"): 1,
        ("mux", "spa"): 1,
    }
    targets = await db_pool.fetch(
        "SELECT language, status, progress FROM job_targets WHERE job_id=$1 ORDER BY 1", job_id
    )
    assert [(t["language"], t["status"], t["progress"]) for t in targets] == [
        ("fra", "succeeded", 1.0),
        ("spa", "succeeded", 1.0),
    ]
    events = await db_pool.fetch(
        "SELECT type, data FROM job_events WHERE job_id=$1 ORDER BY id", job_id
    )
    assert events[0]["type"] == "state" and events[0]["data"]["status"] == "running"
    assert events[-1]["type"] == "state" and events[-1]["data"] == {"status": "succeeded"}
    fractions = [e["data"]["progress"] for e in events if e["type"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    await progress.unsubscribe()
    assert (
        await db_pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE job_id=$1", job_id)
    ) == 0


async def test_one_failing_language_fails_alone(env, db_pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = Script(
        fail={("translate", "spa"): [InvalidInput("no voice for spa", code="no_voice")]}
    )
    worker = make_worker(env, db_pool, script, tmp_path)
    task = await running(worker)
    job_id = await submit(env, db_pool, ["fra", "spa"])
    job = await wait_terminal(db_pool, job_id)
    await stop(worker, task)
    assert job["status"] == "succeeded"
    targets = {
        r["language"]: r
        for r in await db_pool.fetch("SELECT * FROM job_targets WHERE job_id=$1", job_id)
    }
    assert targets["fra"]["status"] == "succeeded"
    assert (
        targets["spa"]["status"],
        targets["spa"]["error_code"],
        targets["spa"]["error_message"],
    ) == ("failed", "no_voice", "no voice for spa")
    assert script.calls[("mux", "spa")] == 0


async def test_retryable_error_resumes_after_the_last_finished_stage(
    env: dict[str, object], db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    script = Script(fail={("mux", "fra"): [ServiceUnavailable("triton restarting")]})
    worker = make_worker(env, db_pool, script, tmp_path)
    task = await running(worker)
    job_id = await submit(env, db_pool, ["fra"])
    job = await wait_terminal(db_pool, job_id)
    await stop(worker, task)
    assert job["status"] == "succeeded" and job["attempt"] == 2
    # Everything before the failure ran once; only the failed stage ran again.
    assert script.calls[("extract", "")] == 1 and script.calls[("translate", "fra")] == 1
    assert script.calls[("mux", "fra")] == 2


async def test_poison_job_fails_with_its_reason_after_max_deliver(env, db_pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = Script(fail={("slow", ""): [ServiceUnavailable("s3 down") for _ in range(10)]})
    worker = make_worker(env, db_pool, script, tmp_path)
    task = await running(worker)
    job_id = await submit(env, db_pool, ["fra"])
    job = await wait_terminal(db_pool, job_id)
    await stop(worker, task)
    assert job["status"] == "failed" and job["error_code"] == "service_unavailable"
    assert job["error_message"] == "gave up after 3 attempts: s3 down"
    assert script.calls[("slow", "")] == 3
    target = await db_pool.fetchrow(
        "SELECT status, error_code FROM job_targets WHERE job_id=$1", job_id
    )
    assert (target["status"], target["error_code"]) == ("failed", "service_unavailable")
    info = await env["js"].stream_info(env["settings"].jobs_stream)
    assert info.state.messages == 0  # term()'d: nothing stuck in the queue


async def test_cancel_stops_at_the_next_stage_boundary(env, db_pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = Script(gate=asyncio.Event())
    worker = make_worker(env, db_pool, script, tmp_path)
    task = await running(worker)
    job_id = await submit(env, db_pool, ["fra"])
    await asyncio.wait_for(script.entered_slow.wait(), 10)
    await db_pool.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", job_id)
    script.gate.set()  # type: ignore[union-attr]
    job = await wait_terminal(db_pool, job_id)
    await stop(worker, task)
    assert job["status"] == "cancelled"
    assert script.calls[("translate", "fra")] == 0
    target = await db_pool.fetchval("SELECT status FROM job_targets WHERE job_id=$1", job_id)
    assert target == "cancelled"


async def test_a_stale_attempt_is_fenced_out_and_the_newer_one_finishes(
    env: dict[str, object], db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    slow = Script(gate=asyncio.Event())
    stale = make_worker(env, db_pool, slow, tmp_path / "a")
    stale.options = WorkerOptions(
        concurrency=1,
        drain_seconds=5,
        stall_seconds=0.1,  # stops heartbeating
        retry_base_delay=0.1,
        policy=env["policy"],  # type: ignore[arg-type]
    )
    stale_task = await running(stale)
    job_id = await submit(env, db_pool, ["fra"])
    await asyncio.wait_for(slow.entered_slow.wait(), 10)

    fresh = Script()
    other = make_worker(env, db_pool, fresh, tmp_path / "b")
    other_task = await running(other)
    job = await wait_terminal(db_pool, job_id)  # redelivered after ack wait, finished by `other`
    assert job["status"] == "succeeded" and job["attempt"] == 2
    slow.gate.set()  # type: ignore[union-attr]  # the stale worker wakes up and tries to write
    await asyncio.sleep(0.5)
    stage = await db_pool.fetchrow(
        "SELECT attempt, outputs FROM job_stages WHERE job_id=$1 AND stage='slow'", job_id
    )
    assert stage["attempt"] == 2
    assert slow.calls[("translate", "fra")] == 0  # fenced before going further
    await stop(stale, stale_task)
    await stop(other, other_task)


async def test_sigterm_drain_naks_the_running_job_for_another_worker(
    env: dict[str, object], db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    stuck = Script(gate=asyncio.Event())
    first = make_worker(env, db_pool, stuck, tmp_path / "a")
    # Every slot busy: stop() must still reach the drain, not wait for the job to end.
    first.options = WorkerOptions(concurrency=1, drain_seconds=0.5, policy=env["policy"])  # type: ignore[arg-type]
    first_task = await running(first)
    job_id = await submit(env, db_pool, ["fra"])
    await asyncio.wait_for(stuck.entered_slow.wait(), 10)
    await stop(first, first_task)  # drain_seconds=0.5: the job is nak'd, not left to time out

    second = make_worker(env, db_pool, Script(), tmp_path / "b")
    second_task = await running(second)
    job = await wait_terminal(db_pool, job_id, limit=5)
    await stop(second, second_task)
    assert job["status"] == "succeeded" and job["attempt"] == 2


async def test_malformed_message_is_terminated(env, db_pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    worker = make_worker(env, db_pool, Script(), tmp_path)
    task = await running(worker)
    await env["js"].publish(env["settings"].jobs_subject, b"not json")
    await asyncio.sleep(1.0)
    await stop(worker, task)
    info = await env["js"].stream_info(env["settings"].jobs_stream)
    assert info.state.messages == 0
