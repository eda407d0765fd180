"""A job from a source_url dubbed end to end by a real worker (tiny models on Triton): the worker
fetches the media (the API never does), and the dub is made of it as of an upload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from polydub.jobs import JobKeys, JobMessage
from polydub.media.probe import probe
from polydub.settings import Settings
from tests.e2e.harness import running_pipeline, wait_terminal
from tests.factories import create_job, create_owner
from tests.media import Clip, make_two_speaker_clip
from tests.source_server import SourceServer, serving

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    return make_two_speaker_clip(
        tmp_path_factory.mktemp("url") / "clip.wav", seconds=8.0, with_video=False
    )


@pytest.fixture(scope="module")
def source(clip: Clip) -> Iterator[SourceServer]:
    with serving(clip.path, big=64 * 1024 * 1024) as served:
        yield served


async def test_a_good_url_is_dubbed(
    services: object,
    tiny_models: list[str],
    db_pool: asyncpg.Pool,
    stack_settings: Settings,
    source: SourceServer,
    clip: Clip,
    tmp_path: Path,
) -> None:
    settings = stack_settings.model_copy(
        update={"source_url_enabled": True, "source_url_allow_loopback": True}
    )
    async with running_pipeline(settings, db_pool, tmp_path / "work") as pipeline:
        owner = await create_owner(db_pool)
        url = f"{source.url}/to-clip"
        job_id = await create_job(
            db_pool, owner, ["deu"], options={"source_url": url, "keep_background": False}
        )
        message = JobMessage(job_id)
        await pipeline.nc.jetstream().publish(
            pipeline.settings.jobs_subject,
            message.to_bytes(),
            headers={"Nats-Msg-Id": message.msg_id},
        )
        job = await wait_terminal(db_pool, job_id, limit=400)
        assert job["status"] == "succeeded", job["error_message"]
        assert job["input_etag"] and job["input_bytes"] == clip.path.stat().st_size
        stored = tmp_path / "input"
        await pipeline.store.download(JobKeys(job_id).input, stored)
        assert stored.read_bytes() == clip.path.read_bytes()
        keys = await pipeline.artifacts(job_id, "deu")
        audio = tmp_path / "deu.m4a"
        await pipeline.store.download(keys["dubbed_audio"], audio)
        assert abs(probe(audio).audio_duration - probe(clip.path).audio_duration) <= 0.05
