"""Test-session fixtures: a real local stack on free ports, started once and always torn down.

Every integration test talks to real servers. The session starts its own PostgreSQL, NATS and S3
in a temporary folder on free ports (so it never collides with a developer's running stack or
another test run), and stops them at the end. Set POLYDUB_TEST_STACK_DIR to keep the data.

Every folder a test makes for servers or spools is made with ``scratch_dir``, under one folder of
the session's own; it is removed after a session without failures (about 1 GB after a full run)
and kept for reading after one with failures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from polydub.infra.triton import InferenceClient
from polydub.settings import Settings
from polydub.stack import Stack
from polydub.stack.isolated import free_port, isolated_settings

__all__ = ["free_port"]  # tests import it from here


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # The servers run in sessions of their own, so they outlive a pytest that dies of SIGTERM
    # (`timeout`, a CI cancel). As an interrupt, the session stops and its fixtures take them down.
    signal.signal(signal.SIGTERM, _interrupt)


_SESSION_DIR: Path | None = None


def scratch_dir(prefix: str) -> Path:
    """A new folder under the session's own in /tmp itself: PostgreSQL, run unprivileged under
    root, must traverse the path."""
    global _SESSION_DIR
    if _SESSION_DIR is None:
        _SESSION_DIR = Path(tempfile.mkdtemp(prefix="polydub-tests-"))
        _SESSION_DIR.chmod(0o755)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_SESSION_DIR))


@pytest.hookimpl(trylast=True)  # after the session's fixtures (the servers) are torn down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SESSION_DIR is not None and exitstatus in (
        pytest.ExitCode.OK,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ):
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def _stack_dir() -> Path:
    given = os.environ.get("POLYDUB_TEST_STACK_DIR")
    if given:
        return Path(given)
    return scratch_dir("stack-")


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    """Settings whose every address points at this session's own servers."""
    yield isolated_settings(_stack_dir())


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An export cache (``POLYDUB_EXPORT_CACHE``) for the tests that export the same real
    checkpoint: the second export of the session is a copy of the first."""
    yield tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="session")
def services(stack_settings: Settings) -> Iterator[Stack]:
    """PostgreSQL, NATS and S3 up for the whole session (Triton has its own fixture)."""
    stack = Stack(stack_settings, only=["postgres", "nats", "s3"])
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def triton_server(stack_settings: Settings) -> Iterator[Stack]:
    """A real Triton (explicit model control) on the session's model repository, empty at start:
    tests export models into ``stack_settings.model_repository`` and load them by name."""
    stack_settings.model_repository.mkdir(parents=True, exist_ok=True)
    stack = Stack(stack_settings, only=["triton"])
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@contextlib.contextmanager
def own_triton(stack_settings: Settings, root: Path) -> Iterator[Settings]:
    """A Triton of its own on free ports with an empty repository under ``root``: for tests
    that must know exactly which models are loaded (the session's Triton is shared)."""
    root.chmod(0o755)
    settings = stack_settings.model_copy(
        update={
            "stack_dir": root,
            "model_repository": root / "model_repository",
            "triton_http_port": free_port(),
            "triton_grpc_port": free_port(),
            "triton_metrics_port": free_port(),
            "triton_url": "",
        }
    )
    settings = Settings(**settings.model_dump())  # re-derive triton_url from the new port
    settings.model_repository.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings, only=["triton"])
    try:
        stack.up()
        yield settings
    finally:
        stack.down()


@pytest.fixture(scope="session")
async def triton(triton_server: Stack, stack_settings: Settings) -> AsyncIterator[InferenceClient]:
    """A gRPC client of the session's Triton."""
    client = InferenceClient(stack_settings.triton_url)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def tiny_models(triton: InferenceClient, stack_settings: Settings) -> list[str]:
    """Every model family exported with the tiny preset into the session's repository, loaded."""
    import asyncio

    from polydub.export.run import export_preset
    from polydub.export.spec import Preset, Target
    from polydub.stack.models import load_groups
    from tests.checkout import TEMPLATES

    repository = stack_settings.model_repository
    await asyncio.to_thread(export_preset, Preset.TINY, Target.CPU, repository, templates=TEMPLATES)
    return await triton.load_models(load_groups(repository))


@pytest.fixture(scope="session")
async def db_pool(services: Stack, stack_settings: Settings) -> AsyncIterator[object]:
    from polydub.infra.db import create_pool, migrate_database

    await migrate_database(stack_settings)
    pool = await create_pool(stack_settings)
    yield pool
    await pool.close()
