"""Run a worker process: connect to everything, consume jobs until SIGTERM, then drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from pathlib import Path

from polydub.clients.db import create_pool
from polydub.clients.queue import connect, ensure_jobs_stream
from polydub.clients.storage import ObjectStore
from polydub.clients.triton import InferenceClient
from polydub.orchestrator.pipeline import PipelineRunner
from polydub.orchestrator.services import Services
from polydub.orchestrator.stages import STAGES
from polydub.orchestrator.state import JobStore
from polydub.orchestrator.worker import Worker, WorkerOptions
from polydub.settings import Settings

log = logging.getLogger(__name__)


async def run_worker(
    settings: Settings,
    options: WorkerOptions | None = None,
    *,
    workdir: Path | None = None,
    handle_signals: bool = True,
) -> None:
    options = options or WorkerOptions()
    pool = await create_pool(settings, max_size=max(4, options.concurrency * 3))
    nc = await connect(settings, name="polydub-worker")
    triton = InferenceClient(settings.triton_url)
    scratch = workdir or Path(tempfile.mkdtemp(prefix="polydub-worker-"))
    try:
        js = nc.jetstream()
        await ensure_jobs_stream(js, settings, options.policy)
        store = JobStore(pool)
        services = Services.create(settings, store, ObjectStore(settings), triton)
        worker: Worker

        def runner() -> PipelineRunner:
            return PipelineRunner(STAGES, store, services, worker.publish, scratch)

        worker = Worker(settings, nc, js, store, runner, options)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
        unloader = asyncio.create_task(services.tts.pool.run_idle_unloader())
        log.info("worker started", extra={"concurrency": options.concurrency})
        try:
            await worker.run()
        finally:
            unloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await unloader
        log.info("worker stopped")
    finally:
        await triton.close()
        await nc.drain()
        await pool.close()
