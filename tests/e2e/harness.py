"""A real worker in this process on a private JetStream stream, and jobs submitted as the API
would (rows + object + message): the e2e tests' way to run whole jobs on a given Triton."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import nats.js.errors

from polydub.api.auth import create_key
from polydub.infra.queue import connect
from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys, JobMessage
from polydub.orchestrator.main import run_worker
from polydub.orchestrator.worker import WorkerOptions
from polydub.settings import Settings
from tests.factories import create_job, create_owner

if TYPE_CHECKING:
    from playwright.async_api import Page

# Debian's chromium, headless and quiet: no sandbox as root, nothing fetched in the background.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@contextlib.asynccontextmanager
async def chromium_page(**page_options: Any) -> AsyncIterator[tuple[Page, list[str]]]:
    """A page in Debian's chromium (Playwright never downloads a browser here) and the list the
    page's uncaught errors are appended to."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(**page_options)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page, errors
        finally:
            await browser.close()


async def wait_terminal(pool: asyncpg.Pool, job_id: uuid.UUID, limit: float) -> asyncpg.Record:
    async with asyncio.timeout(limit):
        while True:
            row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
            if row["status"] in ("succeeded", "failed", "cancelled"):
                return row
            await asyncio.sleep(0.2)


async def wait_settled(pool: asyncpg.Pool, job_id: uuid.UUID, limit: float) -> asyncpg.Record:
    """The job once it is finished or waits for review (a ``review`` job's languages)."""
    async with asyncio.timeout(limit):
        while True:
            row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
            if row["status"] in ("succeeded", "failed", "cancelled", "review"):
                return row
            await asyncio.sleep(0.2)


@dataclass
class Pipeline:
    settings: Settings
    store: ObjectStore
    pool: asyncpg.Pool
    nc: Any

    async def submit(
        self, path: Path, targets: list[str], *, source: str | None = "eng", **options: Any
    ) -> uuid.UUID:
        owner = await create_owner(self.pool)
        job_id = uuid.uuid4()
        input_key = JobKeys(job_id).input
        await self.store.put_file(input_key, path, "application/octet-stream")
        job_id = await create_job(
            self.pool, owner, targets, source=source, input_key=input_key, options=options
        )
        message = JobMessage(job_id)
        await self.nc.jetstream().publish(
            self.settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
        )
        return job_id

    async def artifacts(self, job_id: uuid.UUID, language: str) -> dict[str, str]:
        rows = await self.pool.fetch(
            "SELECT kind, object_key FROM artifacts WHERE job_id=$1 AND language=$2",
            job_id,
            language,
        )
        return {r["kind"]: r["object_key"] for r in rows}


@contextlib.asynccontextmanager
async def running_pipeline(
    settings: Settings, pool: asyncpg.Pool, workdir: Path, concurrency: int = 2
) -> AsyncIterator[Pipeline]:
    """A worker on a stream of its own (``settings``' Triton serves the models)."""
    settings = settings.model_copy(
        update={"jobs_stream": f"E2E_{uuid.uuid4().hex[:6]}", "jobs_subject": "e2e.jobs"}
    )
    worker = asyncio.create_task(
        run_worker(
            settings, WorkerOptions(concurrency=concurrency), workdir=workdir, handle_signals=False
        )
    )
    nc = await connect(settings)
    async with asyncio.timeout(60):  # the worker creates the stream and its consumer
        while True:
            try:
                await nc.jetstream().stream_info(settings.jobs_stream)
                break
            except nats.js.errors.NotFoundError:
                if worker.done():
                    await worker  # raises what stopped it
                await asyncio.sleep(0.2)
    try:
        yield Pipeline(settings, ObjectStore(settings), pool, nc)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker
        await nc.jetstream().delete_stream(settings.jobs_stream)
        await nc.close()


def run_polydub(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a child process with its own environment."""
    return subprocess.run(
        [sys.executable, "-m", "polydub.cli", *args],
        env=env,
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


async def api_client(
    pool: asyncpg.Pool, url: str, name: str
) -> tuple[httpx.AsyncClient, uuid.UUID, str]:
    """A client of the API at ``url`` with a new key: (client, key id, the key)."""
    key = await create_key(pool, name)
    headers = {"Authorization": f"Bearer {key.key}"}
    client = httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=30)
    return client, key.id, key.key


async def stage_output_key(pool: asyncpg.Pool, job_id: uuid.UUID, stage: str, output: str) -> str:
    """The object key of one output of a Spanish stage record."""
    outputs = await pool.fetchval(
        "SELECT outputs FROM job_stages WHERE job_id = $1 AND stage = $2 AND language = 'spa'",
        job_id,
        stage,
    )
    return str(outputs[output])


async def wait_terminal_after_render(pool: asyncpg.Pool, job_id: uuid.UUID) -> None:
    job = await wait_terminal(pool, job_id, limit=300)
    assert job["status"] == "succeeded", job["error_message"]
    status = await pool.fetchval(
        "SELECT status FROM job_targets WHERE job_id = $1 AND language = 'spa'", job_id
    )
    assert status == "succeeded"
