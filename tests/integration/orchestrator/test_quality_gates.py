"""Quality gates through the real pipeline code: PipelineRunner, JobStore, the real target stages
(translate ... subtitles), validate and extract_audio with ffmpeg, PostgreSQL and S3.

What needs a model stands in as follows, so that no Triton is involved: a job-scope stage writes
the transcript Whisper would have written (the real ``transcribe`` needs a served model), and a
``TranslationClient`` subclass answers from a script (our own class, not a server mock). The
speech stages only run where there is nothing to say (the silence case: no TTS call, the
language's voice is known up front) or are skipped (subtitles-only jobs).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from polydub.api.db.jobs import get_job
from polydub.api.job_view import job_json
from polydub.infra.storage import ObjectStore
from polydub.infra.triton import InferenceClient
from polydub.manifest import Manifest
from polydub.media.pcm import read_wav
from polydub.orchestrator.artifacts import Artifacts
from polydub.orchestrator.gates import GateThresholds, stage_warnings
from polydub.orchestrator.inference.translation import (
    Translation,
    TranslationCandidate,
    TranslationClient,
)
from polydub.orchestrator.inference.tts import model_name
from polydub.orchestrator.pipeline import PipelineRunner, Stage, StageContext, StageResult
from polydub.orchestrator.quality import transcript_stats
from polydub.orchestrator.records import Segment, Speaker, Speakers, Transcribed, Transcript
from polydub.orchestrator.services import Services
from polydub.orchestrator.stages import STAGES
from polydub.orchestrator.stages.ingest import extract_audio, validate
from polydub.orchestrator.state import JobStore
from polydub.orchestrator.subtitles import parse_srt
from polydub.orchestrator.voices import Voice
from polydub.schemas import JobOut
from polydub.settings import Settings
from tests.factories import create_job, create_owner
from tests.media import make_audio, tone

pytestmark = pytest.mark.integration

HEARD = [
    Segment(0, 0.4, 1.6, "SPEAKER_00").with_text(
        "Hello there.", avg_logprob=-0.3, no_speech_prob=0.01
    ),
    Segment(1, 2.0, 3.4, "SPEAKER_00").with_text(
        "How are you today?", avg_logprob=-0.3, no_speech_prob=0.01
    ),
]


class ScriptedTranslations(TranslationClient):
    """Answers ``replies[target][source text]``; any other text translates to empty text."""

    def __init__(self, triton: InferenceClient, replies: Mapping[str, Mapping[str, str]]) -> None:
        super().__init__(triton)
        self.replies = replies
        self.calls = 0

    async def translate(
        self, text: str, source: str, target: str, n_best: int = 1, *, max_length: int | None = None
    ) -> Translation:
        self.calls += 1
        reply = self.replies.get(target, {}).get(text, "")
        return Translation(source, target, [TranslationCandidate(reply, -0.4)])


class Heard:
    """transcribe and gender as if the models had heard ``segments`` in ``language``."""

    def __init__(self, segments: Sequence[Transcribed], probability: float) -> None:
        self.transcript = Transcript("eng", probability, tuple(segments))

    async def transcribe(self, ctx: StageContext) -> StageResult:
        artifacts = Artifacts(ctx.services.store, ctx.cache_dir)
        key = await artifacts.put_json(ctx.key("transcript.json"), self.transcript.to_json())
        metrics = {
            "language": "eng",
            "language_probability": self.transcript.language_probability,
            "language_detected": ctx.job.source_language is None,
            **transcript_stats(self.transcript.segments).to_dict(),
            "spoken_segments": sum(1 for s in self.transcript.segments if s.text.strip()),
        }
        limits = GateThresholds.from_settings(ctx.services.settings)
        warnings = [w.to_dict() for w in stage_warnings("transcribe", metrics, limits)]
        return StageResult({"transcript": key, "language": "eng"}, metrics, warnings)

    async def gender(self, ctx: StageContext) -> StageResult:
        artifacts = Artifacts(ctx.services.store, ctx.cache_dir)
        names = sorted({s.speaker for s in self.transcript.segments})
        speakers = Speakers(tuple(Speaker(s, "male", 120.0, 1.0, 1.0) for s in names))
        key = await artifacts.put_json(ctx.key("speakers.json"), speakers.to_json())
        return StageResult({"speakers": key}, {})

    def stages(self) -> list[Stage]:
        return [
            Stage("validate", "job", validate),
            Stage("extract_audio", "job", extract_audio),
            Stage("transcribe", "job", self.transcribe),
            Stage("gender", "job", self.gender),
            *(s for s in STAGES if s.scope == "target"),
        ]


class Run:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, services: Services) -> None:
        self.settings, self.pool, self.services = settings, pool, services
        self.events: list[dict[str, Any]] = []
        self.owner = uuid.UUID(int=0)

    async def job(
        self, audio: Path, heard: Heard, targets: list[str], workdir: Path, **kw: Any
    ) -> uuid.UUID:
        self.owner = await create_owner(self.pool)
        key = f"inputs/{uuid.uuid4()}/source"
        await self.services.store.put_file(key, audio, "audio/wav")
        source = kw.pop("source", "eng")
        job_id = await create_job(
            self.pool, self.owner, targets, source=source, input_key=key, options=kw
        )

        async def publish(_job: object, event: dict[str, Any]) -> None:
            self.events.append(event)

        record = await self.services.jobs.claim(job_id)
        assert record is not None
        runner = PipelineRunner(heard.stages(), self.services.jobs, self.services, publish, workdir)
        await runner.run(record)
        return job_id

    async def api_view(self, job_id: uuid.UUID) -> JobOut:
        """The job as ``GET /api/v1/jobs/{id}`` returns it."""
        row = await get_job(self.pool, self.owner, job_id)
        return JobOut.model_validate(job_json(row, self.settings))

    async def artifact(self, job_id: uuid.UUID, language: str, kind: str) -> bytes:
        key = await self.pool.fetchval(
            "SELECT object_key FROM artifacts WHERE job_id=$1 AND language=$2 AND kind=$3",
            job_id,
            language,
            kind,
        )
        assert key is not None, kind
        return await self.services.store.get_bytes(key)


@pytest.fixture
async def run(
    services: object, db_pool: asyncpg.Pool, stack_settings: Settings
) -> AsyncIterator[Run]:
    store = ObjectStore(stack_settings)
    await store.ensure_bucket()
    # Nothing here may reach Triton (none runs for this module): a call would fail the test.
    triton = InferenceClient("127.0.0.1:9", timeout=5.0)
    worker = Services.create(stack_settings, JobStore(db_pool), store, triton)
    # What Triton would serve: no manifest, so no model counts as random and the gates fail
    # languages instead of warning. Read "now" and never again (it is not asked for).
    worker.manifest_cache = (math.inf, Manifest())
    yield Run(stack_settings, db_pool, worker)
    await triton.close()


@pytest.fixture
def speech_wav(tmp_path: Path) -> Path:
    return make_audio(tmp_path / "speech.wav", tone(4.0, 180.0))


async def test_every_translation_empty_fails_each_language_with_the_reason(
    run: Run, speech_wav: Path, tmp_path: Path
) -> None:
    translations = ScriptedTranslations(run.services.triton, {})
    run.services.translation = translations
    heard = Heard(HEARD, probability=0.35)
    job_id = await run.job(speech_wav, heard, ["fra", "spa"], tmp_path / "w", source=None)

    job = await run.api_view(job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "all_targets_failed"
    for target in job.targets:
        assert target.status == "failed" and target.error is not None
        assert target.error.code == "nothing_translated"
        assert "every one of the 2 transcribed segments" in target.error.message
    assert translations.calls == 4  # two segments into two languages
    later = await run.pool.fetchval(
        "SELECT count(*) FROM job_stages WHERE job_id=$1 AND stage <> 'translate' AND language<>''",
        job_id,
    )
    assert later == 0  # nothing ran after the gate
    failed = [e for e in run.events if e["type"] == "target"]
    assert {e["language"] for e in failed} == {"fra", "spa"}
    assert all(e["error"]["detail"]["empty_translations"] == 2 for e in failed)
    # The auto-detected language was unsure: a job-wide warning explains the likely cause.
    [warning] = job.warnings
    assert (warning.code, warning.stage, warning.language) == (
        "low_language_probability",
        "transcribe",
        None,
    )
    assert "0.35" in warning.message


async def test_an_empty_language_fails_alone_and_partial_ones_warn(
    run: Run, speech_wav: Path, tmp_path: Path
) -> None:
    replies = {"spa": {"Hello there.": "Hola."}, "deu": {t.text: "Ja." for t in HEARD}}
    run.services.translation = ScriptedTranslations(run.services.triton, replies)
    heard = Heard(HEARD, probability=1.0)
    job_id = await run.job(
        speech_wav, heard, ["deu", "fra", "spa"], tmp_path / "w", subtitles_only=True
    )

    job = await run.api_view(job_id)
    assert job.status == "succeeded" and job.error is None
    by_language = {t.language: t for t in job.targets}
    assert {lang: t.status for lang, t in by_language.items()} == {
        "deu": "succeeded",
        "fra": "failed",
        "spa": "succeeded",
    }
    assert by_language["fra"].error is not None
    assert by_language["fra"].error.code == "nothing_translated"
    assert by_language["deu"].warnings == []
    [partial] = by_language["spa"].warnings
    assert (partial.code, partial.stage, partial.language) == (
        "empty_translations",
        "translate",
        "spa",
    )
    assert partial.message.startswith("1 of 2 transcribed segments")
    assert [w.code for w in job.warnings] == ["empty_translations"]  # job-wide list: all of them

    report = json.loads(await run.artifact(job_id, "spa", "quality_report"))
    assert report["no_speech"] is False
    assert [w["code"] for w in report["warnings"]] == ["empty_translations"]
    assert report["stages"]["translate"]["empty_translations"] == 1


@pytest.mark.parametrize("kind", ["music", "digital_silence"])
async def test_no_speech_is_an_ordinary_success(run: Run, tmp_path: Path, kind: str) -> None:
    samples = tone(3.0, 220.0) if kind == "music" else np.zeros(3 * 48000, np.float32)
    audio = make_audio(tmp_path / f"{kind}.wav", samples)
    translations = ScriptedTranslations(run.services.triton, {})
    run.services.translation = translations
    # The language's voice is known up front, so even assign_voices needs no TTS call.
    run.services.voice_cache["voice:deu"] = Voice(model_name("deu"), "male", 120.0)
    job_id = await run.job(audio, Heard([], probability=0.0), ["deu"], tmp_path / "w", source=None)

    job = await run.api_view(job_id)
    assert job.status == "succeeded", job.targets
    assert [t.status for t in job.targets] == ["succeeded"]
    assert translations.calls == 0
    # One warning says there was no speech; a low detection probability on silence is no news.
    assert [(w.code, w.language) for w in job.warnings] == [("no_speech", None)]
    assert job.targets[0].warnings == []

    report = json.loads(await run.artifact(job_id, "deu", "quality_report"))
    assert report["no_speech"] is True
    assert [w["code"] for w in report["warnings"]] == ["no_speech"]
    assert report["stages"]["synthesize"]["dubbed_seconds"] == 0.0
    assert parse_srt((await run.artifact(job_id, "deu", "subtitles_srt")).decode()) == []

    # The dub is the original audio (normalised in level, nothing else changed).
    keys = await run.pool.fetch(
        "SELECT stage, outputs FROM job_stages WHERE job_id=$1 AND stage IN ('extract_audio', 'mix')",
        job_id,
    )
    wavs = {r["stage"]: r["outputs"]["original48k" if r["stage"] == "extract_audio" else "dubbed_wav"]
            for r in keys}  # fmt: skip
    original, _ = read_wav(await _download(run, wavs["extract_audio"], tmp_path / "o.wav"))
    dubbed, _ = read_wav(await _download(run, wavs["mix"], tmp_path / "d.wav"))
    assert dubbed.shape == original.shape
    if kind == "music":
        assert np.corrcoef(original[:, 0], dubbed[:, 0])[0, 1] > 0.999
    else:
        assert not np.any(dubbed)


async def _download(run: Run, key: str, path: Path) -> Path:
    return await run.services.store.download(key, path)
