"""Fixtures of the hostile-input tests: the corpus and its canary, an API on the session's stack
with a stream of its own, a key, and recorders of every ffprobe/ffmpeg command line."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from polydub.api.app import create_app
from polydub.api.auth import NewKey, create_key
from polydub.settings import Settings
from tests.conftest import scratch_dir
from tests.integration.api.helpers import Served
from tests.integration.hostile.corpus import BaseMedia, Canary, Material, base_media


@pytest.fixture(scope="session")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canary]:
    watched = Canary(tmp_path_factory.mktemp("canary"))
    yield watched
    watched.close()


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> BaseMedia:
    return base_media(tmp_path_factory.mktemp("hostile-base"))


@pytest.fixture(scope="session")
def material(base: BaseMedia, canary: Canary) -> Material:
    return Material(base, canary)


@pytest.fixture(scope="session")
def hostile_settings(stack_settings: Settings) -> Settings:
    # Default limits (3600 s, 7680x4320, 16 streams): the corpus is written against them.
    stream = f"HOSTILE_{uuid.uuid4().hex[:6]}"
    return stack_settings.model_copy(
        update={
            "jobs_stream": stream,
            "jobs_subject": f"{stream.lower()}.jobs",
            "api_tmp_dir": scratch_dir("polydub-hostile-spool-"),
            "api_outbox_poll_seconds": 0.1,
            "api_events_poll_seconds": 0.25,
            "retention_interval_seconds": 3600.0,
        }
    )


@pytest.fixture(scope="session")
async def hostile_api(
    hostile_settings: Settings, db_pool: asyncpg.Pool, tiny_models: list[str]
) -> AsyncIterator[Served]:
    # The models served, not only a server: the API refuses a target no served model covers
    # (language_not_served) before it probes the upload. In a whole run earlier tests had
    # loaded them; run alone, every case was refused for that.
    served = Served(create_app(hostile_settings))
    await served.start()
    yield served
    await served.stop()


@pytest.fixture(scope="session")
async def hostile_key(db_pool: asyncpg.Pool) -> NewKey:
    return await create_key(
        db_pool, "hostile", rate_limit_per_minute=100_000, max_concurrent_jobs=10_000
    )


@pytest.fixture
async def client(hostile_api: Served, hostile_key: NewKey) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=hostile_api.url,
        headers={"Authorization": f"Bearer {hostile_key.key}"},
        timeout=60,
    ) as http:
        yield http


class _Proxy:
    """A module stand-in that records command lines and delegates everything else."""

    def __init__(self, real: Any, name: str, calls: list[list[str]]) -> None:
        self._real = real
        self._name = name
        self._calls = calls

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._real, attr)
        if attr != self._name:
            return value

        def recorded(*args: Any, **kwargs: Any) -> Any:
            argv = list(args[0]) if args and isinstance(args[0], list | tuple) else list(args)
            self._calls.append([str(a) for a in argv])
            return value(*args, **kwargs)

        return recorded


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every ffprobe/ffmpeg command run in this process (the API's and the worker's alike): all of
    them go through polydub.media's runner."""
    import subprocess

    from polydub.media import runner

    calls: list[list[str]] = []
    monkeypatch.setattr(runner, "subprocess", _Proxy(subprocess, "Popen", calls))
    return calls
