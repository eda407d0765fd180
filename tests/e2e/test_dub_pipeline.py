"""A whole job through real workers: NATS, PostgreSQL, S3, Triton (tiny models) and ffmpeg.

The tiny models have random weights, so the words are noise; what is checked is everything the
platform promises regardless of model quality: every deliverable exists per language, the video
stream is bit-identical, the audio keeps the input's duration, subtitles parse, the transcript
names the speakers, and stages ran once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from polydub.clients.storage import ObjectStore
from polydub.orchestrator.main import run_worker
from polydub.orchestrator.media.mux import stream_md5
from polydub.orchestrator.media.probe import probe
from polydub.orchestrator.subtitles import parse_srt, parse_vtt
from polydub.orchestrator.worker import WorkerOptions
from polydub.settings import Settings
from tests.factories import create_job, create_owner
from tests.media import make_two_speaker_clip

pytestmark = pytest.mark.e2e

KINDS = {
    "dubbed_video",
    "dubbed_audio",
    "subtitles_srt",
    "subtitles_vtt",
    "source_subtitles_srt",
    "source_subtitles_vtt",
    "transcript",
    "quality_report",
}


async def wait_terminal(pool: asyncpg.Pool, job_id: uuid.UUID, limit: float) -> asyncpg.Record:
    async with asyncio.timeout(limit):
        while True:
            row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
            if row["status"] in ("succeeded", "failed", "cancelled"):
                return row
            await asyncio.sleep(0.2)


async def test_two_speakers_dubbed_into_two_languages(
    services: object,
    tiny_models: list[str],
    db_pool: asyncpg.Pool,
    stack_settings: Settings,
    tmp_path: Path,
) -> None:
    clip = make_two_speaker_clip(tmp_path / "two_speakers.mp4", seconds=12.0)
    store = ObjectStore(stack_settings)
    job_id = uuid.uuid4()
    input_key = f"inputs/{job_id}/source"
    await store.put_file(input_key, clip.path, "video/mp4")
    owner = await create_owner(db_pool)
    job_id = await create_job(
        db_pool,
        owner,
        ["spa", "fra"],
        source="eng",
        input_key=input_key,
        options={"num_speakers": 2},
    )

    settings = stack_settings.model_copy(
        update={"jobs_stream": f"E2E_{uuid.uuid4().hex[:6]}", "jobs_subject": "e2e.jobs"}
    )
    worker = asyncio.create_task(
        run_worker(
            settings, WorkerOptions(concurrency=1), workdir=tmp_path / "work", handle_signals=False
        )
    )
    from polydub.clients.queue import connect

    nc = await connect(settings)
    try:
        await asyncio.sleep(0.5)  # the worker creates the stream
        js = nc.jetstream()
        await js.publish(
            settings.jobs_subject,
            json.dumps({"job_id": str(job_id)}).encode(),
            headers={"Nats-Msg-Id": str(job_id)},
        )
        job = await wait_terminal(db_pool, job_id, limit=400)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker
        await nc.jetstream().delete_stream(settings.jobs_stream)
        await nc.close()

    targets = await db_pool.fetch(
        "SELECT language, status, error_message FROM job_targets WHERE job_id=$1", job_id
    )
    assert job["status"] == "succeeded", (job["error_message"], [dict(t) for t in targets])
    assert {t["language"]: t["status"] for t in targets} == {"spa": "succeeded", "fra": "succeeded"}

    stages = await db_pool.fetch(
        "SELECT stage, language, attempt FROM job_stages WHERE job_id=$1", job_id
    )
    assert len(stages) == 5 + 2 * 6 and {s["attempt"] for s in stages} == {1}

    source = probe(clip.path)
    source_video = stream_md5(clip.path)
    for language in ("spa", "fra"):
        rows = await db_pool.fetch(
            "SELECT kind, object_key FROM artifacts WHERE job_id=$1 AND language=$2",
            job_id,
            language,
        )
        keys = {r["kind"]: r["object_key"] for r in rows}
        assert set(keys) == KINDS
        video = tmp_path / f"{language}.mp4"
        await store.download(keys["dubbed_video"], video)
        assert stream_md5(video) == source_video  # the video stream is copied, bit for bit
        dubbed = probe(video)
        assert abs(dubbed.audio_duration - source.audio_duration) <= 0.05
        srt = (await store.get_bytes(keys["subtitles_srt"])).decode()
        vtt = (await store.get_bytes(keys["subtitles_vtt"])).decode()
        assert vtt.startswith("WEBVTT")
        assert len(parse_srt(srt)) == len(parse_vtt(vtt))
        transcript = json.loads(await store.get_bytes(keys["transcript"]))
        assert transcript["target_language"] == language
        assert {s["speaker"] for s in transcript["speakers"]} == {"SPEAKER_00", "SPEAKER_01"}
        assert {s["speaker"] for s in transcript["segments"]} <= {"SPEAKER_00", "SPEAKER_01"}
        report = json.loads(await store.get_bytes(keys["quality_report"]))
        assert report["stages"]["diarize"]["speakers_found"] == 2
        assert "integrated_lufs" in report["stages"]["mix"]
