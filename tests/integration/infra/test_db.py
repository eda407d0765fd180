import asyncpg
import pytest

from polydub.infra.db import Migration, load_migrations, migrate
from polydub.settings import Settings

pytestmark = pytest.mark.integration

CORE_TABLES = {
    "api_keys",
    "jobs",
    "job_targets",
    "job_stages",
    "artifacts",
    "job_events",
    "outbox",
    "webhook_deliveries",
    "schema_migrations",
}


async def test_migrations_apply_once_and_rerun_as_no_op(
    db_pool: asyncpg.Pool, stack_settings: Settings
) -> None:
    # db_pool already migrated the database; a second run applies nothing and changes nothing.
    async with db_pool.acquire() as conn:
        applied = await migrate(conn)
        assert applied == []
        versions = [
            r["version"]
            for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        ]
        assert versions == [m.version for m in load_migrations()]
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert tables >= CORE_TABLES


async def test_a_failing_migration_rolls_back_whole(db_pool: asyncpg.Pool) -> None:
    bad = Migration(9999, "broken", "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;")
    async with db_pool.acquire() as conn:
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate(conn, [*load_migrations(), bad])
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert (
            await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 9999") == 0
        )


async def test_concurrent_migrations_apply_each_version_once(stack_settings: Settings) -> None:
    import asyncio

    extra = Migration(
        9001,
        "counter",
        "CREATE TABLE migration_probe (id int); INSERT INTO migration_probe VALUES (1);",
    )
    conns = [await asyncpg.connect(stack_settings.postgres_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, [*load_migrations(), extra]) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 0, 1]
        assert await conns[0].fetchval("SELECT count(*) FROM migration_probe") == 1
    finally:
        await conns[0].execute(
            "DROP TABLE migration_probe; DELETE FROM schema_migrations WHERE version = 9001"
        )
        for c in conns:
            await c.close()


async def test_jsonb_round_trips_as_python_objects(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        value = await conn.fetchval("SELECT $1::jsonb", {"speakers": 2, "langs": ["spa", "fra"]})
    assert value == {"speakers": 2, "langs": ["spa", "fra"]}


async def test_a_client_stalled_inside_a_transaction_releases_its_row_lock(
    db_pool: asyncpg.Pool, stack_settings: Settings
) -> None:
    """A process that stops while holding a row lock (a worker's fenced write) must not block
    the process taking its work over: the server ends the stalled session after the pool's
    idle-in-transaction limit, its lock goes, and the stalled client's next statement fails."""
    from polydub.infra.db import IDLE_IN_TRANSACTION_S, create_pool

    await db_pool.execute("CREATE TABLE IF NOT EXISTS stall_probe (id int PRIMARY KEY, n int)")
    await db_pool.execute("INSERT INTO stall_probe VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
    stalled_pool = await create_pool(stack_settings, idle_in_transaction_s=1.0)
    try:
        async with stalled_pool.acquire() as conn:
            limit = await conn.fetchval("SHOW idle_in_transaction_session_timeout")
            assert limit == "1s"
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("SELECT n FROM stall_probe WHERE id = 1 FOR UPDATE")
            # The stalled client sends nothing more; another takes the row within the limit.
            async with db_pool.acquire() as other, other.transaction():
                # SET LOCAL: pooled connections keep no session state (the pool resets nothing).
                await other.execute("SET LOCAL lock_timeout = '10s'")
                await other.execute("UPDATE stall_probe SET n = n + 1 WHERE id = 1")
            # The server ends the session on its own; asyncpg reports the next statement as a
            # lost connection or, when the server's message and the statement cross, as an
            # InternalClientError about its protocol's state.
            stale = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
            with pytest.raises((*stale, OSError)):
                await conn.execute("UPDATE stall_probe SET n = n + 100 WHERE id = 1")
        assert await db_pool.fetchval("SELECT n FROM stall_probe WHERE id = 1") >= 1
    finally:
        await stalled_pool.close()
        await db_pool.execute("DROP TABLE IF EXISTS stall_probe")
    assert await db_pool.fetchval("SHOW idle_in_transaction_session_timeout") == (
        f"{int(IDLE_IN_TRANSACTION_S)}s"
    )
