"""Languages as people write them, at submission: tags are answered as canonical codes, and a
target the served models cannot dub (here: only spa and fra voices) is refused before any work,
by the API and, before the upload, by the client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from polydub.api.app import create_app
from polydub.client import ApiError, AsyncClient
from polydub.settings import Settings
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import Media, Served, free_port

pytestmark = pytest.mark.integration


async def _submit(client: httpx.AsyncClient, clip: Path, **data: str) -> httpx.Response:
    content = await asyncio.to_thread(clip.read_bytes)
    return await client.post(
        "/api/v1/jobs", data=data, files={"file": ("talk.mp4", content, "video/mp4")}
    )


async def test_tags_are_answered_as_canonical_codes(clients: Clients, media: Media) -> None:
    accepted = await _submit(
        clients.a, media.clip, target_languages="es-ES,fr", source_language="en"
    )
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["target_languages"] == ["fra", "spa"] and job["source_language"] == "eng"
    # Subtitles need translation only: a language without a voice is a subtitles target.
    subtitles = await _submit(
        clients.a, media.clip, target_languages="it", source_language="en", subtitles_only="true"
    )
    assert subtitles.status_code == 202, subtitles.text
    assert subtitles.json()["target_languages"] == ["ita"]
    for job_id in (job["id"], subtitles.json()["id"]):
        await clients.a.delete(f"/api/v1/jobs/{job_id}")


async def test_a_target_without_a_voice_is_refused_at_submission(
    clients: Clients, media: Media
) -> None:
    refused = await _submit(clients.a, media.clip, target_languages="spa,it")
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "language_not_served"
    assert error["message"] == (
        "cannot dub into ita (Italian) with the models being served; served: fra, spa"
    )
    assert error["detail"] == {"languages": ["ita"], "served": ["fra", "spa"]}


async def test_an_unknown_tag_says_which_was_meant(clients: Clients, media: Media) -> None:
    refused = await _submit(clients.a, media.clip, target_languages="spanich")
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "unsupported_language"
    assert "unsupported language 'spanich' (did you mean 'spa', Spanish?)" in error["message"]
    assert "{" not in error["message"]


async def test_the_client_checks_before_uploading(
    api: Served, clients: Clients, media: Media, tmp_path: Path
) -> None:
    # A file that does not exist: the refusal comes before anything is read or sent.
    absent = tmp_path / "never-read.mp4"
    async with AsyncClient(api.url, clients.key_a.key) as client:
        with pytest.raises(ApiError) as not_served:
            await client.create_job(absent, ["es", "it-IT"])
        assert not_served.value.code == "language_not_served"
        assert not_served.value.detail == {"languages": ["ita"], "served": ["fra", "spa"]}
        with pytest.raises(ApiError) as unknown:
            await client.create_job(absent, "spanich")
        assert unknown.value.code == "unsupported_language" and unknown.value.status == 422
        assert "did you mean 'spa'" in unknown.value.message
        job = await client.create_job(media.clip, "es-MX", source_language="en")
        assert job.target_languages == ["spa"]
        await client.cancel_job(job.id)


async def test_an_unreachable_model_server_does_not_refuse_jobs(
    api_settings: Settings, clients: Clients, media: Media
) -> None:
    # The queue rides out a model server's outage: the served check is skipped, not failed.
    unreachable = api_settings.model_copy(update={"triton_url": f"127.0.0.1:{free_port()}"})
    other = Served(create_app(unreachable))
    await other.start()
    try:
        async with httpx.AsyncClient(
            base_url=other.url, headers=clients.a.headers, timeout=20.0
        ) as client:
            accepted = await _submit(client, media.clip, target_languages="it")
            assert accepted.status_code == 202, accepted.text
            assert accepted.json()["target_languages"] == ["ita"]
            await client.delete(f"/api/v1/jobs/{accepted.json()['id']}")
    finally:
        await other.stop()
