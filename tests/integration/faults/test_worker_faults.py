"""A worker killed with SIGKILL mid-stage, and a worker stalled with SIGSTOP past the ack wait:
each job finishes once on another worker, resuming after the last finished stage, with one
terminal event and one webhook; a stalled worker that wakes up is fenced out.

Workers are ``polydub worker run`` subprocesses with ``--ack-wait 3`` on the session's stack
(Triton with the tiny models); jobs go through the API subprocess with a callback URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest

from loadtests.harness import Deployment, Proc
from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys
from polydub.stack import Stack
from tests.integration.api.helpers import Receiver, Served
from tests.integration.faults.conftest import (
    ACK_WAIT,
    MAX_DELIVER,
    RETRY_DELAY,
    objects,
    open_api,
    stage_rows,
    terminal_events,
    wait_terminal,
    wait_until,
    webhook_counts,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")

JOB_STAGES = ("validate", "extract_audio", "separate", "diarize", "transcribe", "gender")
TARGET_STAGES = ("translate", "assign_voices", "synthesize", "mix", "mux", "subtitles")


def start_worker(deploy: Deployment, name: str) -> Proc:
    return deploy.start_worker(
        name,
        concurrency=1,
        ack_wait=ACK_WAIT,
        max_deliver=MAX_DELIVER,
        retry_delay=RETRY_DELAY,
    )


async def running_mid_job(pool: asyncpg.Pool, job_id: str, finished: int) -> str | None:
    """The stage running once at least ``finished`` stages are done (None before that)."""
    rows = await stage_rows(pool, job_id)
    done = [r for r in rows if r["status"] == "succeeded"]
    running = [r["stage"] for r in rows if r["status"] == "running"]
    return running[0] if len(done) >= finished and running else None


async def running_in_attempt(pool: asyncpg.Pool, job_id: str, attempt: int) -> bool:
    rows = await stage_rows(pool, job_id)
    return any(r["status"] == "running" and r["attempt"] == attempt for r in rows)


async def check_resumed_once(
    pool: asyncpg.Pool, settings: object, job_id: str, cut: float
) -> dict[str, int]:
    """Every stage succeeded exactly once in the record; stages finished before ``cut`` kept
    attempt 1 and their objects were never written again; the rest ran in attempt 2."""
    rows = await stage_rows(pool, job_id)
    names = [(r["stage"], r["language"]) for r in rows]
    assert sorted(names) == sorted(
        [(s, "") for s in JOB_STAGES] + [(s, "spa") for s in TARGET_STAGES]
    )
    assert all(r["status"] == "succeeded" for r in rows)
    before = {r["stage"] for r in rows if r["finished_at"].timestamp() < cut}
    for row in rows:
        assert row["attempt"] == (1 if row["stage"] in before else 2), dict(row)
    assert len(before) >= 2
    stored = objects(settings, f"jobs/{job_id}/")  # type: ignore[arg-type]
    for key, modified in stored.items():
        stage = key.split("/")[2]
        if stage == JobKeys.SPEECH_CACHE:  # content-addressed: the same bytes whoever writes
            continue
        assert stage in JOB_STAGES + TARGET_STAGES, key
        if stage in before:
            # Written by attempt 1 only: a rewrite would be stamped after the cut.
            assert modified.timestamp() < cut + 1.0, (key, modified, cut)
    return {r["stage"]: r["attempt"] for r in rows}


async def check_artifacts(pool: asyncpg.Pool, store: ObjectStore, job_id: str) -> None:
    """One row per output kind, and each row's sha256 is the stored object's."""
    rows = await pool.fetch(
        "SELECT kind, object_key, sha256, size_bytes FROM artifacts WHERE job_id = $1",
        uuid.UUID(job_id),
    )
    kinds = [r["kind"] for r in rows]
    assert len(kinds) == len(set(kinds)) == 8, kinds
    for row in rows:
        data = await store.get_bytes(row["object_key"])
        assert len(data) == row["size_bytes"]
        assert hashlib.sha256(data).hexdigest() == row["sha256"], row["kind"]


async def test_kill_9_mid_stage_resumes_on_another_worker(
    local: Deployment,
    services: Stack,
    tiny_models: list[str],
    db_pool: asyncpg.Pool,
    clip: bytes,
    receiver: tuple[Receiver, Served],
) -> None:
    hook, hook_server = receiver
    api_proc = local.start_api()
    first = start_worker(local, "worker-a")
    local.wait_api(api_proc)
    local.wait_worker(first)
    api = await open_api(local, db_pool)
    try:
        job_id = await api.submit(clip, callback=f"{hook_server.url}/hook")
        stage = await wait_until(lambda: running_mid_job(db_pool, job_id, 3), 60, 0.02)
        first.kill9()  # no drain, no nak: the message waits for its ack wait to lapse
        cut = time.time()  # after the kill: whatever attempt 1 finished, it finished before
        killed_at = time.monotonic()
        second = start_worker(local, "worker-b")
        await wait_terminal(db_pool, [job_id], 120)
        recovered = time.monotonic() - killed_at
        job = (await api.http.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "succeeded", job
        attempt = await db_pool.fetchval(
            "SELECT attempt FROM jobs WHERE id = $1", uuid.UUID(job_id)
        )
        assert attempt == 2
        attempts = await check_resumed_once(db_pool, local.settings, job_id, cut)
        await check_artifacts(db_pool, ObjectStore(local.settings), job_id)
        assert await terminal_events(db_pool, job_id) == ["succeeded"]
        await wait_until(lambda: _has(hook, job_id), 20, 0.1)
        await asyncio.sleep(1.0)  # a duplicate would arrive by now
        assert webhook_counts(hook) == {(job_id, "succeeded"): 1}
        print(
            f"kill -9 during {stage}: finished on worker-b {recovered:.1f} s after the kill; "
            f"attempts per stage {attempts}"
        )
        assert second.alive()
    finally:
        await api.http.aclose()


async def _has(hook: Receiver, job_id: str) -> bool:
    return any(key[0] == job_id for key in webhook_counts(hook))


async def test_sigstop_past_the_ack_wait_fences_the_stale_worker(
    local: Deployment,
    services: Stack,
    tiny_models: list[str],
    db_pool: asyncpg.Pool,
    clip: bytes,
    receiver: tuple[Receiver, Served],
) -> None:
    hook, hook_server = receiver
    api_proc = local.start_api()
    stale = start_worker(local, "worker-stale")
    local.wait_api(api_proc)
    local.wait_worker(stale)
    api = await open_api(local, db_pool)
    try:
        job_id = await api.submit(clip, callback=f"{hook_server.url}/hook")
        stage = await wait_until(lambda: running_mid_job(db_pool, job_id, 3), 60, 0.02)
        stale.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        cut = time.time()
        fresh = start_worker(local, "worker-fresh")
        try:
            await wait_terminal(db_pool, [job_id], 120)
        finally:
            stale.signal(signal.SIGCONT)
        took_over = time.monotonic() - stopped_at
        job = (await api.http.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "succeeded", job
        await check_resumed_once(db_pool, local.settings, job_id, cut)

        # Awake again, the stale worker writes nothing more: its next write is fenced.
        def fenced() -> bool:
            return any(
                r.get("msg") == "fenced out; dropping the job without ack"
                for r in stale.log_records()
            )

        await wait_until(_async(fenced), 60, 0.2)
        await asyncio.sleep(ACK_WAIT + 1)  # nothing is redelivered: the fresh worker acked
        row = await db_pool.fetchrow(
            "SELECT status, attempt, finished_at FROM jobs WHERE id = $1", uuid.UUID(job_id)
        )
        assert (row["status"], row["attempt"]) == ("succeeded", 2)
        assert await terminal_events(db_pool, job_id) == ["succeeded"]
        await check_artifacts(db_pool, ObjectStore(local.settings), job_id)
        await wait_until(lambda: _has(hook, job_id), 20, 0.1)
        assert webhook_counts(hook) == {(job_id, "succeeded"): 1}
        late = [
            r for r in await stage_rows(db_pool, job_id) if r["finished_at"] > row["finished_at"]
        ]
        assert late == []  # no stage record changed after the job finished
        print(
            f"SIGSTOP during {stage}: finished on the fresh worker {took_over:.1f} s after the "
            "stop; the stale worker was fenced on waking"
        )
        assert stale.alive() and fresh.alive()
    finally:
        await api.http.aclose()


def _async(check: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def run() -> T:
        return check()

    return run


async def test_a_job_whose_worker_dies_on_every_delivery_fails_with_a_reason(
    local: Deployment,
    services: Stack,
    tiny_models: list[str],
    db_pool: asyncpg.Pool,
    clip: bytes,
    receiver: tuple[Receiver, Served],
) -> None:
    """A poison job (say, one that gets its worker OOM-killed): after MaxDeliver deliveries
    JetStream stops redelivering it; it must end failed with a reason, not stay 'running'."""
    hook, hook_server = receiver
    api_proc = local.start_api()

    def worker(name: str) -> Proc:
        return local.start_worker(
            name, concurrency=1, ack_wait=ACK_WAIT, max_deliver=2, retry_delay=RETRY_DELAY
        )

    first = worker("worker-1")
    local.wait_api(api_proc)
    local.wait_worker(first)
    api = await open_api(local, db_pool)
    try:
        job_id = await api.submit(clip, callback=f"{hook_server.url}/hook")
        await wait_until(lambda: running_mid_job(db_pool, job_id, 1), 60, 0.02)
        first.kill9()  # delivery 1 of 2
        # Two workers now, as in a deployment: one gets delivery 2 and dies with it, the
        # other has nothing to run but hears JetStream give up on the job.
        pair = [worker("worker-2"), worker("worker-3")]

        def holder() -> Proc | None:
            for proc in pair:
                for record in proc.log_records():
                    if record.get("msg") == "job started" and record.get("job_id") == job_id:
                        return proc
            return None

        second = await wait_until(_async(holder), 60, 0.05)
        await wait_until(lambda: running_in_attempt(db_pool, job_id, 2), 60, 0.02)
        second.kill9()  # delivery 2 of 2: JetStream will not deliver it again
        survivor = next(p for p in pair if p is not second)
        await wait_terminal(db_pool, [job_id], ACK_WAIT * 3 + 30)
        job = (await api.http.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "worker_lost" and "2 deliveries" in job["error"]["message"]
        assert await terminal_events(db_pool, job_id) == ["failed"]
        await wait_until(lambda: _has(hook, job_id), 20, 0.1)
        assert webhook_counts(hook) == {(job_id, "failed"): 1}
        assert survivor.alive()
    finally:
        await api.http.aclose()
