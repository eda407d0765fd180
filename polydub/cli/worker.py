"""``polydub worker run``: an orchestrator worker process (stateless; run as many as you like)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from polydub.errors import ConfigurationError
from polydub.logging import setup_logging
from polydub.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Orchestrator workers.")


@app.command()
def run(
    concurrency: Annotated[int, typer.Option(help="Jobs at once in this process.")] = 2,
    drain_seconds: Annotated[
        float, typer.Option(help="On SIGTERM, wait this long for jobs.")
    ] = 30.0,
    # The queue policy is the shared durable consumer's: every worker of a stream should agree.
    # Short values make fault drills (a stalled or killed worker) fast; production keeps the
    # defaults of polydub.infra.queue.ConsumerPolicy.
    ack_wait: Annotated[
        float | None,
        typer.Option(min=0.5, help="Seconds without a heartbeat before a job is redelivered."),
    ] = None,
    max_deliver: Annotated[
        int | None, typer.Option(min=1, help="Deliveries of a job before it fails.")
    ] = None,
    retry_delay: Annotated[
        float | None,
        typer.Option(min=0.0, help="First nak delay after a retryable error (doubles each time)."),
    ] = None,
) -> None:
    """Consume jobs from the JOBS work queue until SIGTERM, then drain."""
    import dataclasses

    from polydub.infra.queue import ConsumerPolicy
    from polydub.orchestrator.main import run_worker
    from polydub.orchestrator.worker import WorkerOptions

    settings = get_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    policy = ConsumerPolicy()
    if ack_wait is not None:
        policy = dataclasses.replace(policy, ack_wait_seconds=ack_wait)
    if max_deliver is not None:
        policy = dataclasses.replace(policy, max_deliver=max_deliver)
    options = WorkerOptions(concurrency=concurrency, drain_seconds=drain_seconds, policy=policy)
    if retry_delay is not None:
        options = dataclasses.replace(options, retry_base_delay=retry_delay)
    try:
        asyncio.run(run_worker(settings, options))
    except ConfigurationError as exc:  # e.g. no ffprobe: one line, no traceback, exit 2
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
