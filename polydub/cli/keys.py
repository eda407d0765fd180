"""``polydub keys create|revoke|list``: API keys, stored hashed; a key is shown once."""

from __future__ import annotations

import asyncio
from typing import Annotated

import asyncpg
import typer
from rich.console import Console
from rich.table import Column, Table

from polydub.errors import NotFound
from polydub.infra.db import migrate_database
from polydub.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="API keys: create, revoke, list.")
console = Console()


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="Who the key is for (shown in lists).")],
    rate_limit: Annotated[
        int | None, typer.Option("--rate-limit", min=1, help="Requests a minute.")
    ] = None,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", min=1, help="Jobs queued or running at once.")
    ] = None,
) -> None:
    """Create a key and print it with its webhook signing secret. Neither is shown again."""
    from polydub.api.auth import create_key  # the API tier: polydub-api

    settings = get_settings()

    async def run() -> None:
        await migrate_database(settings)
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            new = await create_key(
                conn,
                name,
                rate_limit_per_minute=rate_limit or settings.api_default_rate_limit_per_minute,
                max_concurrent_jobs=max_jobs or settings.api_default_max_concurrent_jobs,
            )
        finally:
            await conn.close()
        console.print(f"key ({new.name}, id {new.id}):")
        print(new.key)
        console.print("webhook signing secret (Polydub-Signature):")
        print(new.webhook_secret)
        console.print(
            f"[dim]limits: {new.rate_limit_per_minute} requests/min, "
            f"{new.max_concurrent_jobs} concurrent jobs. Store both now: only hashes are kept "
            "for the key.[/dim]"
        )

    asyncio.run(run())


@app.command()
def revoke(
    key: Annotated[str, typer.Argument(help="The key's prefix, id, or the whole key.")],
) -> None:
    """Revoke a key: every request with it is refused from now on (401)."""
    from polydub.api.auth import revoke_key

    settings = get_settings()

    async def run() -> None:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            when = await revoke_key(conn, key)
        finally:
            await conn.close()
        console.print(f"revoked at {when.isoformat()}")

    try:
        asyncio.run(run())
    except NotFound as exc:
        console.print(f"[red]{exc.message}")
        raise typer.Exit(1) from None


@app.command("list")
def list_() -> None:
    """The keys (never their secrets)."""
    from polydub.api.db.keys import list_keys

    settings = get_settings()

    async def run() -> None:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            rows = await list_keys(conn)
        finally:
            await conn.close()
        # The prefix is what revoke takes: never cut, whatever the terminal's width.
        table = Table(
            Column("prefix", no_wrap=True, min_width=12),
            Column("name", overflow="fold"),
            "rate/min",
            "max jobs",
            Column("created", overflow="fold"),
            Column("revoked", overflow="fold"),
        )
        for r in rows:
            table.add_row(
                r["prefix"],
                r["name"],
                str(r["rate_limit_per_minute"]),
                str(r["max_concurrent_jobs"]),
                r["created_at"].isoformat(timespec="seconds"),
                r["revoked_at"].isoformat(timespec="seconds") if r["revoked_at"] else "",
            )
        console.print(table)

    asyncio.run(run())
