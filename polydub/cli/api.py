"""``polydub api serve`` runs the HTTP API; ``polydub api purge`` deletes job data."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Annotated, Any

import typer
from rich.console import Console

from polydub.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="The HTTP API.")
console = Console()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (default POLYDUB_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default POLYDUB_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve /api/v1 with uvicorn (each worker also relays the outbox and sends webhooks)."""
    import uvicorn

    from polydub.api.slow_clients import HeaderDeadlineProtocol
    from polydub.logging import setup_logging

    settings = get_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    host, port = host or settings.api_host, port or settings.api_port
    options: dict[str, Any] = {
        "proxy_headers": True,
        "log_config": None,
        "timeout_graceful_shutdown": 10,
        # h11 with a deadline on each request's headers (POLYDUB_API_HEADER_TIMEOUT_SECONDS).
        "http": HeaderDeadlineProtocol,
    }
    if not settings.api_metrics_port:
        uvicorn.run(
            "polydub.api.app:create_served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            **options,
        )
        return
    if workers > 1:
        console.print(
            "error: with POLYDUB_API_METRICS_PORT each process serves its own metrics:"
            " run one worker per pod (scale with replicas)",
            style="red",
        )
        raise typer.Exit(2)
    # One server on two sockets: the public port and the operations port (/metrics, readiness).
    from polydub.api.app import create_served_app

    config = uvicorn.Config(create_served_app(settings), host=host, port=port, **options)
    public = config.bind_socket()
    operations = socket.create_server((host, settings.api_metrics_port))
    uvicorn.Server(config).run(sockets=[public, operations])


@app.command()
def purge(
    job: Annotated[
        str | None, typer.Option("--job", help="Purge this job now (any owner).")
    ] = None,
) -> None:
    """Delete expired jobs' data now, or one job's (its input, outputs and rows)."""
    from polydub.api.retention import purge_expired, purge_job
    from polydub.infra.db import create_pool
    from polydub.infra.storage import ObjectStore

    settings = get_settings()

    async def run() -> None:
        pool = await create_pool(settings)
        try:
            store = ObjectStore(settings)
            if job:
                deleted = await purge_job(pool, store, uuid.UUID(job))
                console.print(f"job {job}: {deleted} objects deleted, rows removed")
            else:
                report = await purge_expired(pool, store)
                console.print(report or "another replica is purging right now")
        finally:
            await pool.close()

    asyncio.run(run())
