"""Triton, NATS, PostgreSQL and the S3 server each restarted while jobs run: every job ends
(succeeded, or failed with its reason), none is lost, no webhook is sent twice.

A stack of its own (the session's stays untouched), Triton loading the tiny models at start
so that a restarted Triton serves them again, the API and two workers as subprocesses. Jobs are
submitted before the first restart and after each one; the servers go down one at a time,
each for about a second (PostgreSQL's smart shutdown waits for its clients, so the stack's stop
escalates to SIGKILL after 15 s: a crash and WAL recovery, the harshest of the four).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from loadtests.harness import Deployment, deployment
from polydub.api.auth import create_key
from polydub.jobs import TERMINAL
from polydub.settings import Settings
from tests.conftest import scratch_dir
from tests.integration.api.helpers import Receiver, Served
from tests.integration.faults.conftest import (
    ACK_WAIT,
    MAX_DELIVER,
    RETRY_DELAY,
    fault_settings,
    wait_until,
    webhook_counts,
)

pytestmark = pytest.mark.integration

RESTARTS = ("triton", "nats", "postgres", "s3")


async def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One statement on a fresh connection: the server may have restarted since the last."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def submit(http: httpx.AsyncClient, clip: bytes, callback: str, dub: bool) -> str:
    """Submit, retrying while the API answers 5xx (a server it needs is just coming back)."""
    data = {"target_languages": "spa", "source_language": "eng", "callback_url": callback}
    if not dub:
        data["subtitles_only"] = "true"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            response = await http.post(
                "/api/v1/jobs", data=data, files={"file": ("clip.mp4", clip, "video/mp4")}
            )
            if response.status_code == 202:
                job_id: str = response.json()["id"]
                return job_id
            assert response.status_code >= 500, response.text
        assert time.monotonic() < deadline, "the API did not accept a job within 30 s"
        await asyncio.sleep(0.5)


@pytest.fixture
async def own_stack(stack_settings: Settings, tiny_models: list[str]) -> AsyncIterator[Deployment]:
    root = scratch_dir("polydub-faults-")
    base = fault_settings(stack_settings)
    overrides = {
        name: getattr(base, name)
        for name in (
            "jobs_stream", "jobs_subject", "api_webhook_allow_private",
            "api_webhook_poll_seconds", "api_webhook_backoff_base_seconds",
            "api_webhook_backoff_max_seconds", "api_webhook_timeout_seconds",
            "api_outbox_poll_seconds", "retention_interval_seconds",
        )
    }  # fmt: skip
    context = deployment(
        root, stack_settings.model_repository, startup_models=tiny_models, **overrides
    )
    deploy = await asyncio.to_thread(context.__enter__)
    try:
        yield deploy
    finally:
        await asyncio.to_thread(context.__exit__, None, None, None)
        shutil.rmtree(root, ignore_errors=True)


async def test_restarting_each_server_loses_no_job_and_sends_no_duplicate_webhook(
    own_stack: Deployment, clip: bytes, receiver: tuple[Receiver, Served]
) -> None:
    deploy = own_stack
    hook, hook_server = receiver
    callback = f"{hook_server.url}/hook"
    api_proc = deploy.start_api()
    workers = [
        deploy.start_worker(
            f"worker-{i}",
            concurrency=2,
            ack_wait=ACK_WAIT,
            max_deliver=MAX_DELIVER,
            retry_delay=RETRY_DELAY,
        )
        for i in range(2)
    ]
    await asyncio.to_thread(deploy.wait_api, api_proc)
    for worker in workers:
        await asyncio.to_thread(deploy.wait_worker, worker)
    dsn = deploy.settings.postgres_dsn
    conn = await asyncpg.connect(dsn)
    key = await create_key(conn, "restarts", rate_limit_per_minute=100_000)
    await conn.close()
    http = httpx.AsyncClient(
        base_url=deploy.api_url, headers={"Authorization": f"Bearer {key.key}"}, timeout=30
    )
    ids: list[str] = []
    downtime: dict[str, float] = {}
    try:
        for i in range(4):
            ids.append(await submit(http, clip, callback, dub=i == 0))
        for server in RESTARTS:
            await asyncio.sleep(1.5)  # let the jobs get going on this server
            downtime[server] = await asyncio.to_thread(deploy.restart_server, server, 1.0)
            ids.append(await submit(http, clip, callback, dub=server == "s3"))

        async def all_terminal() -> bool:
            rows = await query(
                dsn,
                "SELECT count(*) AS n FROM jobs WHERE id = ANY($1::uuid[]) AND status = ANY($2)",
                [uuid.UUID(i) for i in ids],
                list(TERMINAL),
            )
            return bool(rows[0]["n"] == len(ids))

        await wait_until(all_terminal, 240, 0.5)
        jobs = await query(
            dsn,
            "SELECT id, status, error_code, error_message, attempt FROM jobs"
            " WHERE id = ANY($1::uuid[])",
            [uuid.UUID(i) for i in ids],
        )
        assert len(jobs) == len(ids)  # none lost
        targets = await query(
            dsn,
            "SELECT job_id, language, status, error_code, error_message FROM job_targets"
            " WHERE job_id = ANY($1::uuid[])",
            [uuid.UUID(i) for i in ids],
        )
        for job in jobs:
            # Every fault here is transient: a job may be retried, never failed for it. The
            # message names each target's own reason, the one that decides what to fix.
            reasons = [dict(t) for t in targets if t["job_id"] == job["id"] and t["error_code"]]
            assert job["status"] == "succeeded", (dict(job), reasons)
        for job_id in ids:
            events = await query(
                dsn,
                "SELECT count(*) AS n FROM job_events WHERE job_id = $1 AND type = 'state'"
                " AND data->>'status' = ANY($2)",
                uuid.UUID(job_id),
                list(TERMINAL),
            )
            assert events[0]["n"] == 1, job_id

        async def delivered() -> bool:
            rows = await query(
                dsn,
                "SELECT count(*) AS n FROM webhook_deliveries WHERE job_id = ANY($1::uuid[])"
                " AND language = '' AND status = 'delivered'",
                [uuid.UUID(i) for i in ids],
            )
            return bool(rows[0]["n"] == len(ids))

        await wait_until(delivered, 60, 0.5)
        await asyncio.sleep(1.0)  # a duplicate would have arrived by now
        counts = webhook_counts(hook)
        assert set(counts) == {(str(j["id"]), j["status"]) for j in jobs}
        assert set(counts.values()) == {1}, counts
        by_status: dict[str, int] = {}
        for job in jobs:
            by_status[job["status"]] = by_status.get(job["status"], 0) + 1
        print(
            f"restarts (seconds away) { ({k: round(v, 1) for k, v in downtime.items()}) }; "
            f"{len(ids)} jobs: {by_status}; attempts {sorted(j['attempt'] for j in jobs)}; "
            f"failures {[(j['error_code'], j['error_message']) for j in jobs if j['error_code']]}"
        )
        assert api_proc.alive() and all(w.alive() for w in workers)
    finally:
        await http.aclose()
