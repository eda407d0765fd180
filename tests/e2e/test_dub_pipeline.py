"""A whole job through real workers: NATS, PostgreSQL, S3, Triton (tiny models) and ffmpeg.

The tiny models have random weights, so the words are noise; what is checked is everything the
platform promises regardless of model quality: every deliverable exists per language, the video
stream is bit-identical, the audio keeps the input's duration, subtitles parse, the transcript
names the speakers, and stages ran once each.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from polydub.jobs import ArtifactKind
from polydub.media.mux import stream_md5
from polydub.media.probe import probe
from polydub.orchestrator.subtitles import parse_srt, parse_vtt
from polydub.settings import Settings
from tests.e2e.harness import Pipeline, running_pipeline, wait_terminal
from tests.media import make_two_speaker_clip

pytestmark = pytest.mark.e2e

# Every deliverable kind the API serves but the preview, made only for a video that MP4 cannot
# hold by copy (these clips are H.264 in MP4).
KINDS = set(ArtifactKind) - {ArtifactKind.PREVIEW_VIDEO}


@pytest.fixture(scope="module")
async def pipeline(
    services: object,
    tiny_models: list[str],
    db_pool: asyncpg.Pool,
    stack_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Pipeline]:
    """A real worker (in this process) on a private stream, for the tests of this module."""
    async with running_pipeline(stack_settings, db_pool, tmp_path_factory.mktemp("work")) as p:
        yield p


async def test_two_speakers_dubbed_into_two_languages(pipeline: Pipeline, tmp_path: Path) -> None:
    clip = make_two_speaker_clip(tmp_path / "two_speakers.mp4", seconds=12.0)
    job_id = await pipeline.submit(clip.path, ["spa", "fra"], num_speakers=2, background="separate")
    job = await wait_terminal(pipeline.pool, job_id, limit=400)
    db_pool, store = pipeline.pool, pipeline.store
    targets = await db_pool.fetch(
        "SELECT language, status, error_message FROM job_targets WHERE job_id=$1", job_id
    )
    assert job["status"] == "succeeded", (job["error_message"], [dict(t) for t in targets])
    assert {t["language"]: t["status"] for t in targets} == {"spa": "succeeded", "fra": "succeeded"}

    stages = await db_pool.fetch(
        "SELECT stage, language, attempt FROM job_stages WHERE job_id=$1", job_id
    )
    assert len(stages) == 6 + 2 * 6 and {s["attempt"] for s in stages} == {1}
    # Separation runs right after extraction, so the speech stages hear its speech stem.
    job_scope = await db_pool.fetch(
        "SELECT stage, outputs FROM job_stages WHERE job_id=$1 AND language='' ORDER BY started_at",
        job_id,
    )
    order = ["validate", "extract_audio", "separate", "diarize", "transcribe", "gender"]
    assert [r["stage"] for r in job_scope] == order
    separated = job_scope[2]["outputs"]
    separated = json.loads(separated) if isinstance(separated, str) else separated
    stem = await store.get_bytes(separated["speech16k"])
    assert "/separate/_/" in separated["speech16k"] and len(stem) > 44  # a WAV with samples

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
        # The background was separated once for the job (random tiny weights: the figures are
        # recorded, their values are noise) and laid under both languages' dubs.
        separation = report["stages"]["separate"]
        assert separation["used"] == "separate" and separation["chunks"] >= 2
        assert separation["realtime_factor"] > 0 and separation["speech_ratio_db"] is not None
        assert report["stages"]["mix"]["background_separated"] is True
        # Noise words from random weights: whether any are spoken is chance, so the gates that
        # fail a real model's empty dub only warn here, and the report names the random models.
        assert report["no_speech"] is False
        assert report["stages"]["synthesize"]["dubbed_seconds"] >= 0
        assert "random_weights" in {w["code"] for w in report["warnings"]}
        assert "whisper" in report["models"]["random_weights"]


async def test_audio_only_input_without_background(pipeline: Pipeline, tmp_path: Path) -> None:
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=8.0, with_video=False)
    job_id = await pipeline.submit(clip.path, ["deu"], keep_background=False)
    job = await wait_terminal(pipeline.pool, job_id, limit=300)
    assert job["status"] == "succeeded", job["error_message"]
    keys = await pipeline.artifacts(job_id, "deu")
    assert set(keys) == KINDS - {"dubbed_video"}  # audio in, audio out
    audio = tmp_path / "deu.m4a"
    await pipeline.store.download(keys["dubbed_audio"], audio)
    assert abs(probe(audio).audio_duration - probe(clip.path).audio_duration) <= 0.05
    report = json.loads(await pipeline.store.get_bytes(keys["quality_report"]))
    assert report["stages"]["mix"]["ducked_seconds"] > 0


async def test_subtitles_only_skips_the_speech_stages(pipeline: Pipeline, tmp_path: Path) -> None:
    clip = make_two_speaker_clip(tmp_path / "subs.mp4", seconds=8.0)
    job_id = await pipeline.submit(clip.path, ["ita"], subtitles_only=True)
    job = await wait_terminal(pipeline.pool, job_id, limit=300)
    assert job["status"] == "succeeded", job["error_message"]
    keys = await pipeline.artifacts(job_id, "ita")
    assert set(keys) == {
        "subtitles_srt",
        "subtitles_vtt",
        "source_subtitles_srt",
        "source_subtitles_vtt",
        "transcript",
        "quality_report",
    }
    skipped = await pipeline.pool.fetch(
        "SELECT stage FROM job_stages WHERE job_id=$1 AND metrics ? 'skipped' ORDER BY stage",
        job_id,
    )
    assert [r["stage"] for r in skipped] == [
        "assign_voices",
        "mix",
        "mux",
        "separate",
        "synthesize",
    ]
