"""Which API the user-facing commands talk to: a configured remote one, or the local stack.

``--api URL --key KEY`` (or ``POLYDUB_API_URL`` + ``POLYDUB_API_KEY``) names a remote API.
Without a URL the commands use the local stack's API, and a key of their own that they create
once and keep in ``<stack_dir>/cli/api-key`` (readable by its owner only).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from polydub.settings import Settings, get_settings

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api", help="A remote API's URL (default POLYDUB_API_URL, else the local stack)."
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", help="API key for --api (default POLYDUB_API_KEY)."),
]

LOCAL_KEY_NAME = "polydub-cli (local stack)"


@dataclass(frozen=True)
class Connection:
    url: str
    key: str
    local: bool


def connect(console: Console, api: str | None, key: str | None, *, start_stack: bool) -> Connection:
    """The API to use; for the local one, bring the stack up first when ``start_stack``."""
    url = api or os.environ.get("POLYDUB_API_URL") or None
    key = key or os.environ.get("POLYDUB_API_KEY") or None
    if url:
        if not key:
            console.print("[red]an API key is needed with --api: --key or POLYDUB_API_KEY")
            raise typer.Exit(2)
        return Connection(url.rstrip("/"), key, local=False)

    from polydub.stack import Stack, StackError
    from polydub.stack.servers import api_url

    settings = get_settings()
    if start_stack:
        with console.status(
            "bringing the local stack up (PostgreSQL, NATS, S3, Triton, API, worker)"
        ):
            try:
                Stack(settings, notify=lambda line: console.print(f"[cyan]{line}")).up()
            except StackError as exc:
                console.print(f"[red]the local stack did not come up:[/red] {exc}")
                raise typer.Exit(1) from exc
    else:
        statuses = Stack(settings, only=["postgres", "api"]).status()
        down = [s.name for s in statuses if not s.healthy]
        if down:
            console.print(
                f"[red]the local stack is not running ({', '.join(down)} down):[/red] run "
                "'polydub stack up', or set POLYDUB_API_URL and POLYDUB_API_KEY for a remote API"
            )
            raise typer.Exit(1)
    return Connection(api_url(settings), key or local_key(settings), local=True)


def key_file(settings: Settings) -> Path:
    return settings.stack_dir.resolve() / "cli" / "api-key"


def local_key(settings: Settings) -> str:
    """This stack's CLI key: the stored one while the database knows it and it is not
    revoked, else a new one (stored for next time)."""
    path = key_file(settings)
    stored = path.read_text().strip() if path.is_file() else ""
    return asyncio.run(_ensure_key(settings, stored, path))


async def _ensure_key(settings: Settings, stored: str, path: Path) -> str:
    import asyncpg

    from polydub.api.auth import KEY_RE, create_key, hash_key

    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        if KEY_RE.match(stored):
            valid = await conn.fetchval(
                "SELECT revoked_at IS NULL FROM api_keys WHERE key_hash = $1", hash_key(stored)
            )
            if valid:
                return stored
        new = await create_key(
            conn,
            LOCAL_KEY_NAME,
            rate_limit_per_minute=settings.api_default_rate_limit_per_minute,
            max_concurrent_jobs=settings.api_default_max_concurrent_jobs,
        )
    finally:
        await conn.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(new.key + "\n")
    partial.replace(path)
    return new.key
