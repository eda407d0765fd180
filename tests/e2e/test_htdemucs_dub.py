"""A job with ``background: separate`` through real workers when the separation model served is
HT-Demucs (``separation_htdemucs``, tiny random weights in demucs's own ``.th`` format, chosen
with ``--model separation=FILE`` as a user would): the ``separate`` stage runs it, with the chunk
Triton reports for the served graph, and the dub succeeds with its background under the speech.

The tiny preset is exported into a Triton of this module's own, so the session's repository
(the mask net ``separation``) is left as the other e2e tests expect it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from polydub.export import htdemucs
from polydub.export.plan import ModelChoice, make_plan
from polydub.export.run import export_all
from polydub.export.spec import Preset, Target
from polydub.infra.triton import InferenceClient
from polydub.media.pcm import read_wav
from polydub.media.probe import probe
from polydub.orchestrator.inference.blocks import resampled_length
from polydub.orchestrator.inference.htdemucs import served_chunking
from polydub.serving import htdemucs as front
from polydub.serving.names import SEPARATION, SEPARATION_HTDEMUCS
from polydub.settings import Settings
from polydub.stack.models import load_groups
from tests.checkout import TEMPLATES
from tests.conftest import own_triton
from tests.e2e.harness import running_pipeline, wait_terminal
from tests.media import make_two_speaker_clip

pytestmark = pytest.mark.e2e
CHUNK_SECONDS = 1.0  # the tiny checkpoint's training segment: short, for 2 cores
CHUNKING = front.Chunking(2, round(CHUNK_SECONDS * front.SAMPLE_RATE))


@pytest.fixture(scope="module")
def exported(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("htdemucs_dub")
    checkpoint = htdemucs.tiny_checkpoint(root / "checkpoints" / "tiny.th", seconds=CHUNK_SECONDS)
    plan = make_plan(Preset.TINY, [ModelChoice.parse(f"separation={checkpoint}")])
    result = export_all(plan, Target.CPU, root / "model_repository", TEMPLATES)
    assert SEPARATION_HTDEMUCS in result.manifest.models
    assert SEPARATION not in result.manifest.models  # one separation model at a time
    with own_triton(stack_settings, root) as settings:
        yield settings


@pytest.fixture(scope="module")
async def served(exported: Settings) -> AsyncIterator[Settings]:
    async with InferenceClient(exported.triton_url) as triton:
        await triton.load_models(load_groups(exported.model_repository))
        # The chunk the separator will use: what Triton says of the served graph.
        assert await served_chunking(triton) == CHUNKING
    yield exported


async def test_a_separate_job_runs_ht_demucs_and_dubs(
    served: Settings, services: object, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    clip = make_two_speaker_clip(tmp_path / "two_speakers.mp4", seconds=6.0)
    async with running_pipeline(served, db_pool, tmp_path / "work") as pipeline:
        job_id = await pipeline.submit(clip.path, ["spa"], num_speakers=2, background="separate")
        job = await wait_terminal(db_pool, job_id, limit=400)
        targets = await db_pool.fetch(
            "SELECT language, status, error_message FROM job_targets WHERE job_id=$1", job_id
        )
        assert job["status"] == "succeeded", (job["error_message"], [dict(t) for t in targets])
        assert [t["status"] for t in targets] == ["succeeded"]

        outputs = await db_pool.fetchval(
            "SELECT outputs FROM job_stages WHERE job_id=$1 AND stage='separate'", job_id
        )
        outputs = json.loads(outputs) if isinstance(outputs, str) else outputs
        assert outputs["background"] == "separate" and outputs["model"] == SEPARATION_HTDEMUCS
        # The background at the mix's rate and channels, its speech stem at 16 kHz.
        background = tmp_path / "background.wav"
        await pipeline.store.download(outputs["background_wav"], background)
        mix, mix_rate = read_wav(background)
        speech = tmp_path / "speech16k.wav"
        await pipeline.store.download(outputs["speech16k"], speech)
        stem, stem_rate = read_wav(speech)
        assert stem_rate == 16000 and stem.shape == (
            resampled_length(mix.shape[0], mix_rate, 16000),
            1,
        )
        assert np.all(np.isfinite(mix)) and float(np.abs(stem).max()) > 0.0

        keys = await pipeline.artifacts(job_id, "spa")
        report = json.loads(await pipeline.store.get_bytes(keys["quality_report"]))
        separation = report["stages"]["separate"]
        assert separation["background"] == separation["used"] == "separate"
        assert separation["fallback"] is None
        # HT-Demucs's own chunks (1 s at 44.1 kHz every 0.75 s), not the mask net's 6 s ones.
        native = resampled_length(mix.shape[0], mix_rate, front.SAMPLE_RATE)
        assert separation["chunks"] == len(CHUNKING.starts(native)) >= 7
        assert separation["seconds"] == pytest.approx(mix.shape[0] / mix_rate, abs=1e-3)
        assert separation["realtime_factor"] > 0 and separation["speech_ratio_db"] is not None
        assert report["stages"]["mix"]["background_separated"] is True
        models = report["models"]["models"]
        assert models[SEPARATION_HTDEMUCS]["family"] == "separation"
        assert SEPARATION not in models

        video = tmp_path / "spa.mp4"
        await pipeline.store.download(keys["dubbed_video"], video)
        assert abs(probe(video).audio_duration - probe(clip.path).audio_duration) <= 0.05
