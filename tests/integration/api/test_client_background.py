"""The ``background`` job option through the real API, from both clients and ``polydub dub``'s
submission (issue #16): the job's options carry what was asked, for the orchestrator to read."""

from __future__ import annotations

import asyncio

import pytest

from polydub.cli.dub import Background, _submit
from polydub.client import AsyncClient, Client, JobOut
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import Media, Served

pytestmark = pytest.mark.integration


async def test_clients_and_the_cli_submit_the_background(
    api: Served, clients: Clients, media: Media
) -> None:
    async with AsyncClient(api.url, clients.key_a.key) as client:
        job = await client.create_job(media.clip, ["spa"], background="drop")
        assert job.options["background"] == "drop"
        default = await client.create_job(media.clip, ["spa"])
        assert default.options["background"] is None  # the worker decides from what is served

    def sync() -> tuple[JobOut, JobOut]:  # off the loop: the API is served in this process
        with Client(api.url, clients.key_a.key) as client:
            job = client.create_job(media.clip, ["spa"], background="keep")
            return job, _submit(client, media.clip, ["spa"], "auto", None, Background.SEPARATE)

    job, submitted = await asyncio.to_thread(sync)
    assert job.options["background"] == "keep"
    assert submitted.options["background"] == "separate"
