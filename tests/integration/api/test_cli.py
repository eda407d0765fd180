"""``polydub keys create|revoke|list`` and ``polydub api --help`` against the session's stack."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import asyncpg
import pytest
from typer.testing import CliRunner

from polydub.api.auth import KEY_RE
from polydub.api.secrets_at_rest import SecretBox
from polydub.cli import app
from polydub.settings import Settings, get_settings
from polydub.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, stack_settings: Settings, services: Stack
) -> Iterator[None]:
    monkeypatch.setenv("POLYDUB_POSTGRES_DSN", stack_settings.postgres_dsn)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def _row(dsn: str, prefix: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(dsn)
    try:
        row: asyncpg.Record | None = await conn.fetchrow(
            "SELECT key_hash, rate_limit_per_minute, max_concurrent_jobs, webhook_secret,"
            " revoked_at FROM api_keys WHERE prefix = $1",
            prefix,
        )
        return row
    finally:
        await conn.close()


def test_keys_create_list_revoke(cli_env: None, stack_settings: Settings) -> None:
    runner = CliRunner()
    created = runner.invoke(
        app, ["keys", "create", "--name", "cli-tenant", "--rate-limit", "7", "--max-jobs", "3"]
    )
    assert created.exit_code == 0, created.output
    lines = created.output.splitlines()
    key = next(line for line in lines if KEY_RE.match(line))
    secret = next(line for line in lines if line.startswith("whsec_"))
    prefix = key.split("_")[1]
    row = asyncio.run(_row(stack_settings.postgres_dsn, prefix))
    assert row is not None
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert (row["rate_limit_per_minute"], row["max_concurrent_jobs"]) == (7, 3)
    # the webhook secret is stored encrypted, and decrypts with the deployment's keys
    stored = row["webhook_secret"]
    assert stored.startswith("fernet:") and secret not in stored and row["revoked_at"] is None
    assert SecretBox.from_settings(get_settings()).reveal(stored) == secret

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0 and prefix in listed.output and key not in listed.output

    revoked = runner.invoke(app, ["keys", "revoke", prefix])
    assert revoked.exit_code == 0, revoked.output
    after = asyncio.run(_row(stack_settings.postgres_dsn, prefix))
    assert after is not None and after["revoked_at"] is not None
    unknown = runner.invoke(app, ["keys", "revoke", "000000000000"])
    assert unknown.exit_code == 1 and "no API key" in unknown.output

    served = runner.invoke(app, ["api", "serve", "--help"])
    assert served.exit_code == 0 and "--port" in served.output
