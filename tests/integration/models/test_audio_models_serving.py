"""VAD, diarization and gender models served by the real local Triton.

The tiny preset is exported into the session's model repository (Silero VAD and the pitch graph
are the real thing at every preset; the diarization models are randomly initialised, so the
diarization test can only check the structure of the turns, not who is who).
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export.diarization import SEGMENTATION, DiarizationExporter, parity_waveforms
from polydub.export.gender import GenderExporter
from polydub.export.onnx_tools import run_onnx
from polydub.export.spec import RANDOM, Checkpoint, Checkpoints, FamilyExporter, Preset, Target
from polydub.export.vad import VadExporter
from polydub.infra.triton import InferenceClient
from polydub.orchestrator.inference.diarization import DiarizationClient
from polydub.orchestrator.inference.gender import GenderClient
from polydub.orchestrator.inference.vad import VadClient
from polydub.orchestrator.speaker_turns import diarize
from polydub.settings import Settings
from polydub.stack.isolated import free_port
from tests.checkout import place_templates
from tests.speech_audio import FEMALE, MALE, speak, with_gaps

pytestmark = pytest.mark.integration
SR = 16000
MODELS = ("silero_vad", "pyannote_segmentation", "speaker_embedding", "gender")


def tiny_checkpoints(exporter: FamilyExporter) -> Checkpoints:
    """The tiny defaults, plus the optional (gated) segmentation so that it is served too."""
    extra = {SEGMENTATION: Checkpoint(RANDOM, "MIT")} if exporter.name == "diarization" else {}
    return {**exporter.defaults(Preset.TINY), **extra}


@pytest.fixture(scope="module")
async def served(triton: InferenceClient, stack_settings: Settings) -> Path:
    repository = stack_settings.model_repository
    for exporter in (VadExporter(), DiarizationExporter(), GenderExporter()):
        report = exporter.export(tiny_checkpoints(exporter), Target.CPU, repository)
        place_templates(repository, report.models)
    for model in MODELS:
        await triton.load_model(model)
        assert await triton.is_model_ready(model)
    return repository


def _local(repository: Path, model: str, feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
    return run_onnx(repository / model / "1" / "model.onnx", feeds)


async def _counts(triton: InferenceClient, model: str) -> tuple[int, int]:
    stats = await triton.statistics(model)
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


async def test_served_outputs_equal_onnxruntime(triton: InferenceClient, served: Path) -> None:
    speech = speak("Served models give the same numbers.", FEMALE)
    speech = np.pad(speech, (0, max(0, 64 * 512 - speech.size)))
    window = parity_waveforms(1, 160000)
    cases: dict[str, tuple[dict[str, NDArray[Any]], list[str]]] = {
        "silero_vad": (
            {
                "audio": np.concatenate([np.zeros(64, np.float32), speech[: 64 * 512]])[None],
                "state": np.zeros((1, 2, 128), np.float32),
            },
            ["speech_probs", "state_out"],
        ),
        "pyannote_segmentation": ({"waveform": window}, ["log_probs"]),
        "speaker_embedding": (
            {"waveform": window, "weights": np.ones((1, 589), np.float32)},
            ["embedding"],
        ),
        "gender": ({"waveform": speech[None, :SR]}, ["f0_hz", "periodicity", "energy_db"]),
    }
    for model, (feeds, outputs) in cases.items():
        served_out = await triton.infer(model, feeds, outputs)
        expected = _local(served, model, feeds)
        for name, local in zip(outputs, expected, strict=True):
            assert served_out[name].shape == local.shape, (model, name)
            np.testing.assert_allclose(served_out[name], local, atol=1e-5, err_msg=model)


async def test_embeddings_batch_across_concurrent_calls(
    triton: InferenceClient, served: Path
) -> None:
    before = await _counts(triton, "speaker_embedding")
    window = parity_waveforms(1, 160000)[0, 0]
    mask = np.ones(589, np.float32)
    # 12 independent callers (e.g. jobs), one chunk each: Triton's dynamic batcher merges them
    clients = [DiarizationClient(triton, request_batch=1) for _ in range(12)]
    results = await asyncio.gather(
        *(c.embed([window * (1 + 0.1 * i)], [mask]) for i, c in enumerate(clients))
    )
    # Triton counts a request a moment after its response has gone out: read until all 12 show.
    async with asyncio.timeout(10):
        while True:
            after = await _counts(triton, "speaker_embedding")
            inferences, executions = (a - b for a, b in zip(after, before, strict=True))
            if inferences >= 12:
                break
            await asyncio.sleep(0.05)
    assert inferences == 12
    assert executions < inferences
    assert all(r.shape == (1, 256) for r in results)


async def test_vad_on_espeak_speech(triton: InferenceClient, served: Path) -> None:
    audio, spans = with_gaps(
        [
            speak("The quick brown fox jumps over the lazy dog.", MALE),
            speak("Hello again.", FEMALE),
        ],
        gap_s=1.5,
    )
    vad = VadClient(triton)
    regions = await vad.speech_regions(audio)
    assert len(regions) == len(spans)
    for region, (start, end) in zip(regions, spans, strict=True):
        assert region.start == pytest.approx(start, abs=0.2)
        assert region.end == pytest.approx(end, abs=0.2)
    assert await vad.speech_regions(np.zeros(0, np.float32)) == []
    assert await vad.speech_regions(np.zeros(2 * SR, np.float32)) == []


async def test_gender_on_espeak_voices(triton: InferenceClient, served: Path) -> None:
    client = GenderClient(triton)
    sentence = "This voice is classified from its pitch, over a whole sentence."
    male, female = await asyncio.gather(
        client.classify(speak(sentence, MALE)), client.classify(speak(sentence, FEMALE))
    )
    assert (male.label, female.label) == ("male", "female")
    assert male.confidence > 0.8 and female.confidence > 0.8
    assert (await client.classify(np.zeros(0, np.float32))).label == "unknown"
    assert (await client.classify(np.zeros(3 * SR, np.float32))).label == "unknown"


async def test_diarize_two_espeak_speakers(triton: InferenceClient, served: Path) -> None:
    """Tiny random diarization models: the turns' structure is checked, not the labels' truth."""
    lines = [
        ("Good evening, and welcome to the programme.", MALE),
        ("Thank you, it is a pleasure to be here.", FEMALE),
        ("Let us start with the news of the day.", MALE),
        ("Of course, there is a lot to talk about.", FEMALE),
    ]
    audio, spans = with_gaps([speak(text, voice) for text, voice in lines], gap_s=0.8)
    speech = await VadClient(triton).speech_regions(audio)
    assert len(speech) == len(spans)
    assert all(
        abs(r.start - a) < 0.2 and abs(r.end - b) < 0.2
        for r, (a, b) in zip(speech, spans, strict=True)
    )
    client = DiarizationClient(triton)
    for num_speakers in (None, 2):
        turns = await diarize(audio, num_speakers, client=client, speech=speech)
        assert turns, "speech must give turns"
        duration = audio.size / SR
        assert all(0.0 <= t.start < t.end <= duration + 1e-3 for t in turns)
        assert [t.start for t in turns] == sorted(t.start for t in turns)
        labels = sorted({t.speaker for t in turns})
        assert labels == [f"SPEAKER_{i:02d}" for i in range(len(labels))]
        if num_speakers is not None:
            assert len(labels) <= num_speakers
        for label in labels:
            own = [t for t in turns if t.speaker == label]
            assert all(a.end <= b.start for a, b in itertools.pairwise(own))
        # the turns cover the speech (VAD regions) and stay out of the silences
        grid = np.arange(0, duration, 0.01)
        in_speech = np.zeros(grid.size, bool)
        for region in speech:
            in_speech |= (grid >= region.start) & (grid < region.end)
        in_turn = np.zeros(grid.size, bool)
        for turn in turns:
            in_turn |= (grid >= turn.start) & (grid < turn.end)
        assert (in_turn & in_speech).sum() >= 0.9 * in_speech.sum()
        assert (in_turn & ~in_speech).sum() <= 0.05 * in_speech.sum()
    assert await diarize(np.zeros(0, np.float32), client=client) == []
    assert await diarize(np.zeros(2 * SR, np.float32), client=client, speech=[]) == []


async def test_whether_segmentation_is_served_is_not_decided_by_a_triton_that_is_away(
    triton: InferenceClient,
) -> None:
    """A Triton that does not answer (restarting) says nothing about the optional segmentation
    model: assumed served and asked again, not cached as absent for the next minute of jobs."""
    absent = DiarizationClient(triton, segmentation_model="no_such_segmentation")
    assert await absent.has_segmentation() is False  # a ready Triton without it: remembered
    assert absent._segmentation is not None
    async with InferenceClient(f"127.0.0.1:{free_port()}", timeout=2) as away:
        client = DiarizationClient(away)
        assert await client.has_segmentation() is True
        assert client._segmentation is None
