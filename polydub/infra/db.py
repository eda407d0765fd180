"""PostgreSQL: one asyncpg pool per process, and versioned SQL migrations.

Migrations are the files ``migrations/NNNN_name.sql`` applied in order, each in its own transaction,
under an advisory lock so that many API replicas starting at once apply each exactly once.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import TypeAlias

import asyncpg

from polydub.settings import Settings

# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 0x706F6C7964756200  # "polydub\0"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

Pool: TypeAlias = asyncpg.Pool

# PostgreSQL ends a session that sits inside a transaction this long without sending a statement,
# and so releases its row locks. Our transactions send their statements back to back (at most
# one S3 read or NATS publish between two), so only a client that stopped (a frozen or
# SIGSTOPped worker, a paused VM, a partition) trips it. Without it, a worker stopped while its
# fenced write held a job's row lock (``SELECT ... FOR UPDATE``) blocked the worker taking the
# job over until the stopped one woke: every claim timed out (issue 17's CI, the SIGSTOP drill).
IDLE_IN_TRANSACTION_S = 15.0


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, so no call site handles JSON text.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _reset_nothing(conn: asyncpg.Connection) -> None:
    """What the pool runs on a released connection besides asyncpg's own rollback of an open
    transaction and its listeners: nothing. asyncpg's default reset is a statement (RESET ALL,
    UNLISTEN *, CLOSE ALL, pg_advisory_unlock_all()) sent on every release, a second round trip
    for each one-query request: under load it took as long as the query (issue 17, item 5).
    polydub's pooled connections keep no session state: no SET, no LISTEN (the key cache has a
    connection of its own), cursors only inside transactions, and the session-level advisory
    locks (reconcile, retention) are released in a ``finally`` by the code that took them, and a
    connection whose lock statement failed is closed, not pooled (``dropped_on_error``)."""


@contextlib.contextmanager
def dropped_on_error(conn: asyncpg.Connection) -> Iterator[None]:
    """Around a statement that changes a pooled connection's session state (a session-level
    advisory lock taken or released): when it fails or is cancelled, that state is unknown, and
    the pool's release resets nothing (``_reset_nothing``), so the connection is closed instead
    of going back to the pool, and its session's locks end with it."""
    try:
        yield
    except BaseException:
        conn.terminate()
        raise


@contextlib.asynccontextmanager
async def session_lock(
    pool: Pool,
    try_lock: Callable[[asyncpg.Connection], Awaitable[bool]],
    release: Callable[[asyncpg.Connection], Awaitable[None]],
) -> AsyncIterator[bool]:
    """A session-level advisory lock held on a pooled connection for the block; yields whether
    it was taken (False: another session holds it). A connection whose lock or unlock failed is
    closed, not pooled (``dropped_on_error``)."""
    async with pool.acquire() as conn:
        with dropped_on_error(conn):
            taken = await try_lock(conn)
        if not taken:
            yield False
            return
        try:
            yield True
        finally:
            with dropped_on_error(conn):
                await release(conn)


async def create_pool(
    settings: Settings,
    *,
    min_size: int = 1,
    max_size: int = 10,
    idle_in_transaction_s: float = IDLE_IN_TRANSACTION_S,
) -> Pool:
    pool = await asyncpg.create_pool(
        settings.postgres_dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_reset_nothing,
        command_timeout=30,
        server_settings={
            "idle_in_transaction_session_timeout": str(int(idle_in_transaction_s * 1000))
        },
    )
    assert pool is not None
    return pool


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("polydub.infra").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the migrations not applied yet; returns the versions applied by this call."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def migrate_database(settings: Settings) -> list[int]:
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
