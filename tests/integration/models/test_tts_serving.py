"""MMS-TTS served by the real local Triton: on-demand loading, parity with in-process onnxruntime,
slot fitting, batching of concurrent requests, idle unloading and the errors a caller can hit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from polydub.errors import ConfigurationError, InvalidInput
from polydub.export.mms_tts import TOKENIZER_MODEL, MmsTtsExporter, model_name
from polydub.export.mms_tts_graph import OUTPUT_NAMES
from polydub.export.onnx_tools import run_onnx
from polydub.export.spec import Preset, Target
from polydub.infra.triton import InferenceClient
from polydub.orchestrator.inference.tts import ModelPool, TtsClient, request_inputs
from polydub.settings import Settings
from tests.checkout import place_templates
from tests.conftest import own_triton, scratch_dir
from tests.integration.models.statistics import counts, settled

pytestmark = pytest.mark.integration

LANGUAGES = ("eng", "spa")
ENG, SPA = model_name("eng"), model_name("spa")


@pytest.fixture(scope="module")
def tts_triton_settings(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    # Its own Triton: these tests assert which models are loaded, and the session's Triton is
    # shared with tests that load every model.
    root = scratch_dir("polydub-tts-")
    with own_triton(stack_settings, root) as settings:
        yield settings


@pytest.fixture(scope="module")
async def triton(tts_triton_settings: Settings) -> AsyncIterator[InferenceClient]:
    client = InferenceClient(tts_triton_settings.triton_url)
    yield client
    await client.close()


@pytest.fixture(scope="module")
def repository(triton: InferenceClient, tts_triton_settings: Settings) -> Path:
    repo = tts_triton_settings.model_repository
    exporter = MmsTtsExporter(languages=LANGUAGES)
    report = exporter.export(exporter.defaults(Preset.TINY), Target.CPU, repo)
    assert report.models == [TOKENIZER_MODEL, ENG, SPA]
    place_templates(repo, report.models)
    return repo


@pytest.fixture(scope="module")
def tts(triton: InferenceClient, repository: Path) -> TtsClient:
    return TtsClient(triton, pool=ModelPool(triton, idle_seconds=600))


async def test_loads_on_demand_and_matches_onnxruntime(
    triton: InferenceClient, repository: Path, tts: TtsClient
) -> None:
    assert not await triton.is_model_ready(ENG)  # explicit model control: nothing loaded yet
    assert await tts.languages() == ["eng", "spa"]
    speech = await tts.synthesize("Hello from Triton.", "eng", speaking_rate=1.1, seed=5)
    assert await triton.is_model_ready(ENG)
    assert await triton.is_model_ready(TOKENIZER_MODEL)
    assert not await triton.is_model_ready(SPA)  # only what was needed

    spec = await tts.tokenizer("eng")
    feeds = request_inputs(spec.encode("Hello from Triton."), 1 / 1.1, 0.667, 0.8, 5)
    local = run_onnx(repository / ENG / "1" / "model.onnx", feeds, OUTPUT_NAMES)
    valid = int(local[1][0, 0])
    assert speech.samples.shape == (valid,) and speech.sample_rate == 16_000
    assert float(np.max(np.abs(speech.samples - local[0][0, :valid]))) <= 1e-5
    assert speech.duration == pytest.approx(valid / 16_000)


async def test_synthesize_to_fit_lands_within_ten_percent(tts: TtsClient) -> None:
    text = "Dubbing fits the new speech into the slot of the original line."
    natural = await tts.synthesize(text, "eng", seed=21)
    for factor in (0.8, 0.9, 1.1):  # achievable with rates in [0.85, 1.5]
        target = natural.duration * factor
        fitted = await tts.synthesize_to_fit(text, "eng", target, seed=21)
        assert abs(fitted.duration - target) <= 0.1 * target, (factor, fitted.duration, target)


async def test_concurrent_requests_batch(triton: InferenceClient, tts: TtsClient) -> None:
    texts = [f"Sentence number {i} of sixteen." for i in range(16)]
    await tts.synthesize(texts[0], "spa", seed=0)  # load outside the measurement
    before = await settled(triton, SPA)  # the warm-up counted
    results = await asyncio.gather(*(tts.synthesize(t, "spa", seed=i) for i, t in enumerate(texts)))
    after = await counts(triton, SPA, at_least=before[0] + 16)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16
    assert executions < inferences, (inferences, executions)
    # Batched rows are the same speech as a request on its own.
    alone = await tts.synthesize(texts[3], "spa", seed=3)
    assert np.allclose(results[3].samples, alone.samples, atol=1e-5)


async def test_idle_models_unload_and_reload(
    triton: InferenceClient, repository: Path, tts: TtsClient
) -> None:
    pool = ModelPool(triton, idle_seconds=0.5)
    client = TtsClient(triton, pool=pool)
    await client.synthesize("idle soon", "eng", seed=1)
    async with pool.using(ENG):
        await asyncio.sleep(0.7)
        assert await pool.unload_idle() == []  # in use
    await asyncio.sleep(0.7)
    assert await pool.unload_idle() == [ENG]
    assert not await triton.is_model_ready(ENG)
    assert await triton.is_ready()  # an on-demand unload leaves the server ready
    assert await triton.is_model_ready(TOKENIZER_MODEL)  # pinned
    # Another pool (another worker) still believes it loaded: its request reloads it once.
    assert ENG in tts.pool.loaded
    again = await tts.synthesize("idle soon", "eng", seed=1)
    assert again.duration > 0 and await triton.is_model_ready(ENG)
    assert (await client.synthesize("idle soon", "eng", seed=1)).duration == again.duration


async def test_errors_for_unknown_language_missing_voice_and_empty_text(
    triton: InferenceClient, tts: TtsClient
) -> None:
    with pytest.raises(InvalidInput, match="supported: "):
        await tts.synthesize("hello", "xx")
    with pytest.raises(ConfigurationError, match="no MMS-TTS voice for 'ita'") as missing:
        await tts.synthesize("ciao", "ita")
    assert missing.value.code == "tts_voice_missing"
    assert not await triton.is_model_ready(model_name("ita"))
    before = await settled(triton, ENG)
    empty = await tts.synthesize("", "eng")
    assert empty.samples.size == 0 and await counts(triton, ENG) == before
