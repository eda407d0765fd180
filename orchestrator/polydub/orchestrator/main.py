"""Run a worker process: connect to everything, consume jobs until SIGTERM, then drain.

Telemetry: spans go to ``otel_endpoint`` as service polydub-worker; the operations server on
``worker_metrics_port`` serves /metrics (queue depth and Triton statistics polled), /health/live
and /health/ready (polydub.orchestrator.health: NATS, the JetStream consumer, Triton, draining),
on ``worker_metrics_host`` (loopback unless the deployment says otherwise).

A worker without a runnable ffmpeg and ffprobe (``POLYDUB_FFMPEG`` / ``POLYDUB_FFPROBE``) refuses
to start (``ConfigurationError``; ``polydub worker run`` exits 2 with one line) instead of
taking jobs and failing every one.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from polydub.errors import ConfigurationError, PolydubError
from polydub.infra.db import create_pool
from polydub.infra.queue import WORKER_CONSUMER, connect, ensure_jobs_stream
from polydub.infra.storage import ObjectStore
from polydub.infra.triton import InferenceClient, retry_budget
from polydub.media.runner import run_ffmpeg, run_ffprobe
from polydub.media.source_url import tls_context
from polydub.orchestrator.health import WorkerHealth
from polydub.orchestrator.pipeline import PipelineRunner
from polydub.orchestrator.services import Services
from polydub.orchestrator.stages import STAGES
from polydub.orchestrator.state import JobStore
from polydub.orchestrator.worker import Worker, WorkerOptions
from polydub.settings import Settings
from polydub.tasks import cancel_and_wait
from polydub.telemetry.tracing import WORKER_SERVICE, configure_tracing, shutdown_tracing
from polydub.telemetry.worker import OperationsServer, run_pollers

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
    await asyncio.to_thread(check_media_tools)
    if settings.source_url_enabled:
        # A CA file that cannot be read stops the worker now, not each source_url job later.
        await tls_context(settings.source_url_ca_file)
    tracing = configure_tracing(settings, WORKER_SERVICE)
    # Up first: the chart's liveness probe reads it (ready only once connected), and a port in
    # use should stop the worker early.
    operations = OperationsServer(settings.worker_metrics_port, settings.worker_metrics_host)
    operations.start()
    try:
        await _run(settings, options, workdir, handle_signals, on_services, operations)
    finally:
        operations.stop()
        shutdown_tracing(tracing)  # flushes the spans still buffered


def check_media_tools() -> None:
    """Raise ``ConfigurationError`` unless ffprobe and ffmpeg run (``-version``)."""
    try:
        run_ffprobe(["-version"], timeout=30, blame="internal", what="ffprobe -version")
        run_ffmpeg(["-version"], timeout=30, blame="internal", what="ffmpeg -version")
    except PolydubError as exc:
        code = exc.code if isinstance(exc, ConfigurationError) else "ffmpeg_unavailable"
        raise ConfigurationError(
            f"the worker needs ffmpeg and ffprobe: {exc.message}"
            " (install them or set POLYDUB_FFMPEG / POLYDUB_FFPROBE)",
            code=code,
        ) from exc


async def _run(
    settings: Settings,
    options: WorkerOptions,
    workdir: Path | None,
    handle_signals: bool,
    on_services: Callable[[Services], None] | None = None,
    operations: OperationsServer | None = None,
) -> None:
    pool = await create_pool(settings, max_size=max(4, options.concurrency * 3))
    nc = await connect(settings, name="polydub-worker")
    # The worker's settings, not the environment's: one budget for all its model clients.
    triton = InferenceClient(settings.triton_url, budget=retry_budget(settings))
    # A scratch folder made here is the process's own: removed when it stops (a job still in it
    # was not acked, and is redelivered to a worker that starts from its stored inputs).
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
        if operations is not None:
            health = WorkerHealth(
                nc, js, settings.jobs_stream, WORKER_CONSUMER, triton, worker.stopping
            )
            operations.ready_with(health.readiness, asyncio.get_running_loop())
        log.info("worker started", extra={"concurrency": options.concurrency})
        try:
            await worker.run()
        finally:
            if operations is not None:
                operations.not_ready()
            await cancel_and_wait((unloader, pollers))
        log.info("worker stopped")
    finally:
        await triton.close()
        await nc.drain()
        await pool.close()
        if workdir is None:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
