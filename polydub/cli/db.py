"""``polydub db migrate``: apply the versioned schema migrations."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from polydub.infra.db import migrate_database
from polydub.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Database schema.")
console = Console()


@app.command()
def migrate() -> None:
    """Apply the migrations not applied yet (safe to run from many replicas at once)."""
    applied = asyncio.run(migrate_database(get_settings()))
    console.print(f"applied migrations: {applied or 'none (up to date)'}")
