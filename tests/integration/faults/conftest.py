"""Fault drills: real worker subprocesses (``polydub worker run``) and a real API subprocess
(``polydub api serve``) that a test can kill -9, SIGSTOP or cut off from a restarted server;
a webhook receiver on loopback; helpers that read the record (jobs, stages, events, S3)."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from loadtests.harness import Deployment
from polydub.api.auth import NewKey, create_key
from polydub.infra.storage import make_minio
from polydub.jobs import TERMINAL
from polydub.settings import Settings
from polydub.stack.isolated import free_port
from tests.integration.api.helpers import Receiver, Served
from tests.media import DEFAULT_TURNS, make_two_speaker_clip

# Queue timings of the drills: a job left without heartbeats is redelivered after ACK_WAIT.
ACK_WAIT = 3.0
MAX_DELIVER = 20  # the restart drill keeps some jobs nak-ing through two outages
RETRY_DELAY = 0.5


def fault_settings(base: Settings, **extra: object) -> Settings:
    stream = f"FAULT_{uuid.uuid4().hex[:6]}"
    update: dict[str, object] = {
        "jobs_stream": stream,
        "jobs_subject": f"{stream.lower()}.jobs",
        "api_port": free_port(),
        "api_webhook_allow_private": True,
        "api_webhook_poll_seconds": 0.2,
        "api_webhook_backoff_base_seconds": 0.5,
        "api_webhook_backoff_max_seconds": 2.0,
        "api_webhook_timeout_seconds": 3.0,
        "api_outbox_poll_seconds": 0.2,
        "retention_interval_seconds": 3600.0,
        **extra,
    }
    if "worker_metrics_port" in Settings.model_fields:
        update["worker_metrics_port"] = 0
    return base.model_copy(update=update)


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """4 s of video with one English sentence (what the load test submits too)."""
    path = tmp_path_factory.mktemp("fault-media") / "clip.mp4"
    return make_two_speaker_clip(path, seconds=4.0, turns=DEFAULT_TURNS[:1]).path.read_bytes()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, Served]]:
    hook = Receiver()
    served = Served(hook)
    await served.start()
    yield hook, served
    await served.stop()


def webhook_counts(hook: Receiver) -> dict[tuple[str, str], int]:
    """(job id, state) -> how many distinct webhooks of the job's own event arrived (a
    language's events, ``job.language.*``, are not counted). Distinct by delivery id: a webhook
    whose acceptance could not be recorded (PostgreSQL restarting just then) is sent again with
    the same id, which receivers drop (at-least-once, as Standard Webhooks specifies)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for request in hook.requests:
        body = json.loads(request.body)
        if body.get("language"):
            continue
        key = (str(body["job"]["id"]), str(body["job"]["status"]))
        seen.setdefault(key, set()).add(request.headers["polydub-delivery"])
    return {key: len(ids) for key, ids in seen.items()}


@dataclass
class Api:
    http: httpx.AsyncClient
    key: NewKey

    async def submit(self, clip: bytes, callback: str | None = None, **fields: str) -> str:
        data = {"target_languages": "spa", "source_language": "eng", **fields}
        if callback:
            data["callback_url"] = callback
        response = await self.http.post(
            "/api/v1/jobs", data=data, files={"file": ("clip.mp4", clip, "video/mp4")}
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id


@pytest.fixture
def local(stack_settings: Settings, tmp_path: Path) -> Iterator[Deployment]:
    """API and workers on the session's servers (Triton with the tiny models); a test starts
    the processes it needs, and they are always stopped."""
    deploy = Deployment(fault_settings(stack_settings), tmp_path / "logs")
    try:
        yield deploy
    finally:
        deploy.stop_procs()


async def open_api(deploy: Deployment, pool: asyncpg.Pool) -> Api:
    key = await create_key(pool, "faults", rate_limit_per_minute=100_000, max_concurrent_jobs=1000)
    http = httpx.AsyncClient(
        base_url=deploy.api_url, headers={"Authorization": f"Bearer {key.key}"}, timeout=30
    )
    return Api(http, key)


async def wait_until(check: Any, limit: float, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true; an AssertionError naming the check
    (a lambda's source line) when ``limit`` seconds pass first."""
    try:
        async with asyncio.timeout(limit):
            while True:
                value = await check()
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not true after {limit:.0f} s: {_describe(check)}") from None


def _describe(check: Any) -> str:
    name = getattr(check, "__qualname__", repr(check))
    if "<lambda>" not in name:
        return str(name)
    try:
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return str(name)


async def wait_terminal(pool: asyncpg.Pool, ids: list[str], limit: float) -> None:
    wanted = [uuid.UUID(i) for i in ids]

    async def done() -> bool:
        count = await pool.fetchval(
            "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status = ANY($2)",
            wanted,
            list(TERMINAL),
        )
        return bool(count == len(ids))

    await wait_until(done, limit, 0.2)


async def stage_rows(pool: asyncpg.Pool, job_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT stage, language, attempt, status, started_at, finished_at, outputs"
        " FROM job_stages WHERE job_id = $1 ORDER BY started_at",
        uuid.UUID(job_id),
    )
    return rows


async def terminal_events(pool: asyncpg.Pool, job_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT data->>'status' AS status FROM job_events WHERE job_id = $1 AND type = 'state'"
        " AND data->>'status' = ANY($2) ORDER BY id",
        uuid.UUID(job_id),
        list(TERMINAL),
    )
    return [r["status"] for r in rows]


def objects(settings: Settings, prefix: str) -> dict[str, dt.datetime]:
    """S3 objects under prefix -> last modified (the gateway keeps no versions)."""
    client = make_minio(settings)
    return {
        o.object_name: o.last_modified
        for o in client.list_objects(settings.s3_bucket, prefix=prefix, recursive=True)
        if o.object_name and not o.object_name.endswith("/") and o.last_modified
    }
