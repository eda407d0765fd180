"""Whisper served by the real local Triton: the ``whisper`` BLS model (encoder and decoder graphs in
onnxruntime sessions of its own), driven through ``AsrClient``.

The tiny preset is exported into the session's model repository. Its weights are random, so
the text is noise; what is checked is that the served loop produces exactly the tokens of the
in-process ONNX loop on the same graphs, that bad input is handled, and that concurrent calls
share batches: one BLS execution encodes and decodes several requests, every decoder step
running for all of them at once.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from polydub.errors import InvalidInput, PermanentError
from polydub.export.spec import Preset, Target
from polydub.export.whisper import WhisperExporter
from polydub.export.whisper_graphs import BLS_MODEL
from polydub.export.whisper_reference import OrtWhisper
from polydub.infra.triton import InferenceClient
from polydub.languages import LANGUAGES
from polydub.orchestrator.inference.asr import AsrClient, AudioRegion, Transcription
from polydub.serving import whisper_decode, whisper_features, whisper_text
from polydub.settings import Settings
from tests.checkout import place_templates
from tests.integration.models.statistics import counts, settled
from tests.speech_audio import FEMALE, MALE, speak

pytestmark = pytest.mark.integration
SR = 16000
MAX_NEW_TOKENS = 64  # per request (the random model never ends on its own)


@pytest.fixture(scope="module")
async def served(triton: InferenceClient, stack_settings: Settings) -> Path:
    repository = stack_settings.model_repository
    exporter = WhisperExporter()
    report = exporter.export(exporter.defaults(Preset.TINY), Target.CPU, repository)
    place_templates(repository, report.models)
    assert report.token_match == {BLS_MODEL: True} and report.models == [BLS_MODEL]
    await triton.load_model(BLS_MODEL)
    assert await triton.is_model_ready(BLS_MODEL)
    return repository


@pytest.fixture(scope="module")
def local(served: Path) -> OrtWhisper:
    """The same (int8) graphs in this process: the reference for the served loop."""
    return OrtWhisper.from_repository(served)


async def test_transcribe_equals_in_process_loop(
    triton: InferenceClient, local: OrtWhisper
) -> None:
    client = AsrClient(triton, max_new_tokens=MAX_NEW_TOKENS)
    speech = speak("The served loop and the local loop agree token for token.", MALE)
    for language, whisper in (("eng", "en"), (None, None)):
        result = await client.transcribe(speech, language=language)
        [expected] = local.decode([speech], [whisper_decode.DecodeOptions(whisper)], MAX_NEW_TOKENS)
        assert isinstance(result, Transcription)
        assert list(result.tokens) == expected.tokens and len(expected.tokens) > 0
        assert result.language == (language or LANGUAGES_BY_WHISPER[expected.language])
        assert result.language_probability == pytest.approx(expected.language_probability, 1e-4)
        assert result.duration == pytest.approx(speech.size / SR)
        # Segments are the BLS's cut of exactly those tokens, inside the audio.
        assert local.tokenizer_dir is not None
        detok = whisper_text.Detokenizer.load(local.tokenizer_dir, local.facts.eot)
        segments = whisper_text.build_segments(
            expected.tokens, expected.logprobs, local.facts, detok, speech.size / SR
        )
        assert len(result.segments) == len(segments) > 0
        for served_segment, segment in zip(result.segments, segments, strict=True):
            assert served_segment.text == segment.text
            assert served_segment.start == pytest.approx(segment.start, abs=1e-3)
            assert served_segment.end == pytest.approx(segment.end, abs=1e-3)
        for served in result.segments:
            assert 0.0 <= served.start <= served.end <= result.duration
            assert math.isfinite(served.avg_logprob) and served.avg_logprob <= 0
            assert served.no_speech_prob == pytest.approx(expected.no_speech_prob, abs=1e-5)

    code, probability = await client.detect_language(speech)
    [detected] = local.decode(
        [speech], [whisper_decode.DecodeOptions(None, "detect")], MAX_NEW_TOKENS
    )
    assert code == LANGUAGES_BY_WHISPER[detected.language] and code in LANGUAGES
    assert probability == pytest.approx(detected.language_probability, 1e-4)


LANGUAGES_BY_WHISPER = {lang.whisper: lang.code for lang in LANGUAGES.values()}


async def test_zero_length_and_silence_do_not_crash(
    triton: InferenceClient, local: OrtWhisper
) -> None:
    client = AsrClient(triton, max_new_tokens=MAX_NEW_TOKENS)
    empty = await client.transcribe(np.zeros(0, np.float32), language="eng")
    assert empty.segments == [] and empty.tokens == () and empty.duration == 0.0
    assert empty.language == "eng"

    silence = await client.transcribe(np.zeros(3 * SR, np.float32))
    assert silence.language in LANGUAGES and 0.0 < silence.language_probability <= 1.0
    assert all(0.0 <= s.start <= s.end <= 3.0 for s in silence.segments)
    [expected] = local.decode(
        [np.zeros(3 * SR, np.float32)], [whisper_decode.DecodeOptions()], MAX_NEW_TOKENS
    )
    assert list(silence.tokens) == expected.tokens
    assert silence.segments  # random weights hallucinate on silence too
    assert silence.segments[0].no_speech_prob == pytest.approx(expected.no_speech_prob, abs=1e-5)


async def test_long_audio_and_packed_regions(triton: InferenceClient, served: Path) -> None:
    client = AsrClient(triton, max_new_tokens=MAX_NEW_TOKENS)
    speech = speak("A long recording is cut into overlapping windows.", FEMALE)
    long = np.tile(np.concatenate([speech, np.zeros(SR, np.float32)]), 14)[: 47 * SR]
    result = await client.transcribe(long, language="eng")
    assert result.duration == pytest.approx(47.0)
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments
    assert all(0.0 <= s.start <= s.end <= 47.0 for s in result.segments)
    assert any(s.start >= 27.5 for s in result.segments)  # the second window contributed

    regions = [AudioRegion(10.0 * k + 1.0, speech[: (3 + k) * SR]) for k in range(4)]
    packed = await client.transcribe_packed(regions, language="eng")
    assert len(packed) == 4
    for region, transcript in zip(regions, packed, strict=True):
        assert transcript.language == "eng"
        for segment in transcript.segments:
            assert region.start <= segment.start <= segment.end <= region.start + region.duration


async def test_concurrent_calls_share_batches(
    triton: InferenceClient, served: Path, local: OrtWhisper
) -> None:
    client = AsrClient(triton, max_new_tokens=MAX_NEW_TOKENS)
    rng = np.random.default_rng(11)
    clips = [
        np.concatenate([speak(f"Request number {k}.", MALE if k % 2 else FEMALE)] * (1 + k % 3))
        + 0.001 * rng.standard_normal(1).astype(np.float32)
        for k in range(16)
    ]
    before = await settled(triton, BLS_MODEL)
    results = await asyncio.gather(
        *(client.transcribe(c, language="eng" if k % 2 else None) for k, c in enumerate(clips))
    )
    after = await counts(triton, BLS_MODEL, at_least=before[0] + 16)
    assert len(results) == 16 and all(r.tokens for r in results)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    print(f"{BLS_MODEL}: {inferences} inferences in {executions} executions")
    # Each execution runs the encoder once and every decoder step once for all its requests.
    assert inferences == 16 and executions < inferences
    # Batch mates never change a row's tokens.
    k = 3
    [alone] = local.decode([clips[k]], [whisper_decode.DecodeOptions("en")], MAX_NEW_TOKENS)
    assert list(results[k].tokens) == alone.tokens


async def test_min_new_tokens_forces_the_decoded_length(
    triton: InferenceClient, local: OrtWhisper
) -> None:
    """What the ASR benchmark uses to decode the same number of tokens in every system."""
    speech = speak("Exactly this many tokens.", FEMALE)
    client = AsrClient(triton, max_new_tokens=20, min_new_tokens=20)
    result = await client.transcribe(speech, language="eng")
    [expected] = whisper_decode.greedy_decode(
        local,
        whisper_features.log_mel_spectrogram([speech], local.facts.n_mels),
        [whisper_decode.DecodeOptions("en")],
        local.facts,
        20,
        min_new_tokens=20,
    )
    assert list(result.tokens) == expected.tokens and len(expected.tokens) == 20


async def test_bad_language_is_a_clear_permanent_error(triton: InferenceClient) -> None:
    client = AsrClient(triton, max_new_tokens=MAX_NEW_TOKENS)
    with pytest.raises(InvalidInput) as error:
        await client.transcribe(np.zeros(SR, np.float32), language="xxx")
    assert "supported: " in error.value.message and "eng" in error.value.message
    # Straight to the model with a Whisper code it does not know: an error, not a retry loop.
    inputs = {
        "audio": np.zeros((1, SR), np.float32),
        "language": np.array([[b"xx"]], dtype=np.object_),
        "task": np.array([[b"transcribe"]], dtype=np.object_),
    }
    with pytest.raises(PermanentError) as direct:
        await triton.infer(BLS_MODEL, inputs, ["text"])
    assert "unsupported language 'xx'" in direct.value.message
    assert not direct.value.retryable
    # Without the optional max_new_tokens the configured bound (224) applies.
    inputs["language"] = np.array([[b"en"]], dtype=np.object_)
    result = await triton.infer(BLS_MODEL, inputs, ["tokens", "detected_language"])
    assert result["tokens"].shape == (1, 224) and result["detected_language"][0, 0] == b"en"
