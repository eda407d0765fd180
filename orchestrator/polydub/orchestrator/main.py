"""Run a worker process: connect to everything, consume jobs until SIGTERM, then drain.

Telemetry: spans go to ``otel_endpoint`` as service polydub-worker; Prometheus metrics are
served on ``worker_metrics_port`` (/metrics), with queue depth and Triton statistics polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from polydub.infra.db import create_pool
from polydub.infra.queue import WORKER_CONSUMER, connect, ensure_jobs_stream
from polydub.infra.storage import ObjectStore
from polydub.infra.triton import InferenceClient
from polydub.orchestrator.pipeline import PipelineRunner
from polydub.orchestrator.services import Services
from polydub.orchestrator.stages import STAGES
from polydub.orchestrator.state import JobStore
from polydub.orchestrator.worker import Worker, WorkerOptions
from polydub.settings import Settings
from polydub.telemetry.tracing import WORKER_SERVICE, configure_tracing, shutdown_tracing
from polydub.telemetry.worker import run_pollers, start_metrics_server

log = logging.getLogger(__name__)


async def run_worker(
    settings: Settings,
    options: WorkerOptions | None = None,
    *,
    workdir: Path | None = None,
    handle_signals: bool = True,
    on_services: Callable[[Services], None] | None = None,
) -> None:
    """``on_services`` sees the worker's clients before the first job (benchmarks meter them)."""
    options = options or WorkerOptions()
    tracing = configure_tracing(settings, WORKER_SERVICE)
    # Up first: the chart's probes read /metrics, and a port in use should stop the worker early.
    stop_metrics = start_metrics_server(settings.worker_metrics_port, settings.worker_metrics_host)
    try:
        await _run(settings, options, workdir, handle_signals, on_services)
    finally:
        stop_metrics()
        shutdown_tracing(tracing)  # flushes the spans still buffered


async def _run(
    settings: Settings,
    options: WorkerOptions,
    workdir: Path | None,
    handle_signals: bool,
    on_services: Callable[[Services], None] | None = None,
) -> None:
    pool = await create_pool(settings, max_size=max(4, options.concurrency * 3))
    nc = await connect(settings, name="polydub-worker")
    triton = InferenceClient(settings.triton_url)
    scratch = workdir or Path(tempfile.mkdtemp(prefix="polydub-worker-"))
    try:
        js = nc.jetstream()
        await ensure_jobs_stream(js, settings, options.policy)
        store = JobStore(pool)
        services = Services.create(settings, store, ObjectStore(settings), triton)
        if on_services is not None:
            on_services(services)
        worker: Worker

        def runner() -> PipelineRunner:
            return PipelineRunner(STAGES, store, services, worker.publish, scratch)

        worker = Worker(settings, nc, js, store, runner, options)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
        unloader = asyncio.create_task(services.tts.pool.run_idle_unloader())
        pollers = asyncio.create_task(
            run_pollers(
                js,
                settings.jobs_stream,
                WORKER_CONSUMER,
                triton,
                settings.worker_metrics_poll_seconds,
            )
        )
        log.info("worker started", extra={"concurrency": options.concurrency})
        try:
            await worker.run()
        finally:
            for task in (unloader, pollers):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("worker stopped")
    finally:
        await triton.close()
        await nc.drain()
        await pool.close()
