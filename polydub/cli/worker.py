"""``polydub worker run``: an orchestrator worker process (stateless; run as many as you like)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from polydub.logging import setup_logging
from polydub.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Orchestrator workers.")


@app.command()
def run(
    concurrency: Annotated[int, typer.Option(help="Jobs at once in this process.")] = 2,
    drain_seconds: Annotated[
        float, typer.Option(help="On SIGTERM, wait this long for jobs.")
    ] = 30.0,
) -> None:
    """Consume jobs from the JOBS work queue until SIGTERM, then drain."""
    from polydub.orchestrator.main import run_worker
    from polydub.orchestrator.worker import WorkerOptions

    settings = get_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    asyncio.run(
        run_worker(settings, WorkerOptions(concurrency=concurrency, drain_seconds=drain_seconds))
    )
