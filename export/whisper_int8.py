"""Whisper int8 for the CPU profile, accepted on what the served model does with it: speech.

Recipe: weight-only int8 (``onnx_tools.quantize_weights_int8``: onnxruntime's MatMulNBits, 8
bits, blocks of ``BLOCK_SIZE`` weights with their own scale and zero point, the tied output
projection included), activations quantized per row and block by the kernel
(``ACCURACY_LEVEL`` 4). Every row of a batch is computed on its own, so a window's tokens do not
depend on the other windows the dynamic batcher put beside it.

Not onnxruntime's dynamic int8 (``onnx_tools.quantize_int8``): its one activation scale per
tensor is the whole batch's, so the same clip decodes differently alone and in a batch, and on
real whisper-base it moved the encoder's cross K/V by 87% of their range.

Acceptance (``judge``), on the clips of ``check_clips`` (espeak-ng speech; the synthetic tones
where espeak-ng is absent): greedy tokens of the int8 graphs equal the fp32 graphs' on at least
``MIN_AGREEMENT`` of the clips, and each clip decoded alone gives the tokens it gets in one batch
with the others. Figures: bench/whisper_int8.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.export import speech_clips

BLOCK_SIZE = 128
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations, quantized per row and block
CHECK_CLIPS = 8  # speech sentences decoded at export time, alone and as one batch
MIN_AGREEMENT = 0.75  # of the clips: int8 tokens identical to fp32's
MAX_NEW_TOKENS = 48

Array = NDArray[Any]
# audios -> greedy tokens per audio (English, transcribe); one call = one batch
Decode = Callable[[Sequence[Array]], list[list[int]]]


def synthetic_clips() -> list[Array]:
    """Voiced-like tones (7.3 s), noise (2.1 s), silence (1 s): the fallback check clips."""
    rng = np.random.default_rng(1234)
    t = np.arange(int(7.3 * 16000)) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for f0 in (140.0, 220.0) for k in (1, 2, 3))
    tones = (0.1 * envelope * voiced).astype(np.float32)
    noise = (0.05 * rng.standard_normal(int(2.1 * 16000))).astype(np.float32)
    return [tones, noise, np.zeros(16000, dtype=np.float32)]


@dataclass(frozen=True)
class CheckClips:
    audios: tuple[Array, ...]
    texts: tuple[str, ...]  # what was said ("" for synthetic clips)
    speech: bool  # espeak-ng speech, else synthetic_clips()

    @property
    def kind(self) -> str:
        return "espeak-ng speech" if self.speech else "synthetic tones (espeak-ng not installed)"


def check_clips(count: int = CHECK_CLIPS, start: int = 0) -> CheckClips:
    spoken = speech_clips.speech(count, start)
    if spoken is None:
        synthetic = synthetic_clips()
        audios = [synthetic[k % len(synthetic)] for k in range(count)]
        return CheckClips(tuple(audios), ("",) * count, speech=False)
    return CheckClips(tuple(a for _, a in spoken), tuple(t for t, _ in spoken), speech=True)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word-level Levenshtein distance over all reference words (case, punctuation ignored)."""
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = _words(reference), _words(hypothesis)
        previous = list(range(len(hyp) + 1))
        for i, r in enumerate(ref, 1):
            current = [i]
            for j, h in enumerate(hyp, 1):
                current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
            previous = current
        errors += previous[-1]
        words += len(ref)
    return errors / max(words, 1)


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


@dataclass(frozen=True)
class Int8Verdict:
    clips: int
    speech: bool
    agree: int  # clips whose int8 tokens equal fp32's (each decoded alone)
    batch_same: int  # clips whose int8 tokens alone equal their tokens in one batch
    encoder_rdiff: float  # graph-level, vs the fp32 graph: of each output's max |value|
    decoder_rdiff: float
    rtol: float
    wer_fp32: float | None  # on speech only
    wer_int8: float | None

    @property
    def needed(self) -> int:
        return math.ceil(MIN_AGREEMENT * self.clips)

    @property
    def accepted(self) -> bool:
        graphs = max(self.encoder_rdiff, self.decoder_rdiff) <= self.rtol
        return graphs and self.batch_same == self.clips and self.agree >= self.needed

    def note(self) -> str:
        decision = "int8 served on CPU" if self.accepted else "fp32 served on CPU"
        wer = (
            f"; WER fp32 {self.wer_fp32:.1%}, int8 {self.wer_int8:.1%}"
            if self.wer_fp32 is not None and self.wer_int8 is not None
            else ""
        )
        kind = "espeak-ng speech" if self.speech else "synthetic tones (espeak-ng not installed)"
        return (
            f"whisper {decision}: weight-only int8 (MatMulNBits, block {BLOCK_SIZE}) on "
            f"{self.clips} {kind} clips: tokens equal to fp32's on {self.agree}/{self.clips} "
            f"(need {self.needed}), alone = in one batch on {self.batch_same}/{self.clips} "
            f"(need all){wer}; max relative diff vs fp32: encoder {self.encoder_rdiff:.3g}, "
            f"decoder {self.decoder_rdiff:.3g} (limit {self.rtol:g})"
        )


def judge(
    int8: Decode,
    fp32: Decode,
    clips: CheckClips,
    diffs: tuple[float, float],
    rtol: float,
    detokenize: Callable[[list[int]], str] | None = None,
) -> Int8Verdict:
    """Decode every clip alone with both precisions and all together with int8."""
    alone = [int8([audio])[0] for audio in clips.audios]
    reference = [fp32([audio])[0] for audio in clips.audios]
    together = int8(list(clips.audios))
    wer_fp32 = wer_int8 = None
    if clips.speech and detokenize is not None:
        wer_fp32 = word_error_rate(clips.texts, [detokenize(t) for t in reference])
        wer_int8 = word_error_rate(clips.texts, [detokenize(t) for t in alone])
    return Int8Verdict(
        clips=len(clips.audios),
        speech=clips.speech,
        agree=sum(a == r for a, r in zip(alone, reference, strict=True)),
        batch_same=sum(a == t for a, t in zip(alone, together, strict=True)),
        encoder_rdiff=diffs[0],
        decoder_rdiff=diffs[1],
        rtol=rtol,
        wer_fp32=wer_fp32,
        wer_int8=wer_int8,
    )
