"""Translation with NLLB-200 served by Triton: the BLS model ``nllb`` runs the whole beam search.

    translator = TranslationClient(triton)
    result = await translator.translate("The film starts at eight.", "eng", "fra", n_best=3)
    result.best.text, [c.text for c in result.candidates]   # best first
    results = await translator.translate_many(segments, "eng", "spa", n_best=3)

Languages are polydub's canonical ISO 639-3 codes (``polydub.languages``), mapped here to the
FLORES-200 codes NLLB uses; an unknown one is an ``InvalidInput`` listing the supported codes.

Model ``nllb`` (``model_repository/nllb``): inputs text, src_lang, tgt_lang [B, 1] BYTES,
n_best, max_length [B, 1] INT32; outputs translations [B, n] BYTES, scores [B, n] FP32 (sum of
log-probabilities / generated length, higher is better, best first), token_ids [B, n, T] INT64.
One request is one segment; ``translate_many`` sends its segments as concurrent requests, so
Triton's dynamic batcher decodes them (and other jobs' segments) together.

n-best: the pipeline may pick the candidate that best fits a segment's time slot; beam size on
the server is max(n_best, its configured default), at most ``MAX_N_BEST``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from polydub.errors import InvalidInput
from polydub.languages import get_language
from polydub.serving.names import NLLB, NllbOut

MODEL = NLLB
OUTPUTS = (NllbOut.TRANSLATIONS, NllbOut.SCORES)
MAX_N_BEST = 8  # the decoder graph returns 16 candidates per row: beams up to 8
MAX_CHARACTERS = 2000  # one dubbing segment; the server keeps at most 256 source tokens


class Triton(Protocol):
    """What this module needs from Triton: ``polydub.infra.triton.InferenceClient`` fits."""

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]: ...


@dataclass(frozen=True)
class TranslationCandidate:
    text: str
    score: float  # length-normalised log-probability; 0.0 for texts passed through unchanged


@dataclass(frozen=True)
class Translation:
    source: str  # ISO 639-3
    target: str
    candidates: list[TranslationCandidate]  # best first, never empty

    @property
    def best(self) -> TranslationCandidate:
        return self.candidates[0]

    @property
    def text(self) -> str:
        return self.best.text


class TranslationClient:
    def __init__(self, triton: Triton, *, model: str = MODEL) -> None:
        self.triton = triton
        self.model = model

    async def translate(
        self,
        text: str,
        source: str,
        target: str,
        n_best: int = 1,
        *,
        max_length: int | None = None,
    ) -> Translation:
        """Translate one segment; ``n_best`` candidates, best first.

        Empty text gives an empty translation, and source == target gives the text back, both
        without a Triton call. ``max_length`` bounds the target tokens (server default: from
        the source length).
        """
        src, tgt = self._check(source, target, n_best, max_length)
        text = text.strip()
        if len(text) > MAX_CHARACTERS:
            raise InvalidInput(
                f"text of {len(text)} characters is longer than one segment "
                f"(at most {MAX_CHARACTERS}); split it first",
                code="text_too_long",
            )
        if not text or source == target:
            return Translation(source, target, [TranslationCandidate(text, 0.0)])

        result = await self.triton.infer(
            self.model,
            {
                "text": np.array([[text.encode("utf-8")]], dtype=np.object_),
                "src_lang": np.array([[src.encode()]], dtype=np.object_),
                "tgt_lang": np.array([[tgt.encode()]], dtype=np.object_),
                "n_best": np.array([[n_best]], dtype=np.int32),
                "max_length": np.array([[max_length or 0]], dtype=np.int32),
            },
            OUTPUTS,
        )
        texts = result["translations"].reshape(-1)
        scores = result["scores"].reshape(-1)
        candidates = [
            TranslationCandidate(_text(t), float(s))
            for t, s in zip(texts, scores, strict=True)
            if math.isfinite(float(s))  # slots the server could not fill
        ]
        if not candidates:
            candidates = [TranslationCandidate("", float("-inf"))]
        return Translation(source, target, candidates[:n_best])

    async def translate_many(
        self,
        texts: Sequence[str],
        source: str,
        target: str,
        n_best: int = 1,
        *,
        max_length: int | None = None,
    ) -> list[Translation]:
        """Translate segments concurrently (one request each), so they share Triton batches."""
        self._check(source, target, n_best, max_length)
        return list(
            await asyncio.gather(
                *(self.translate(t, source, target, n_best, max_length=max_length) for t in texts)
            )
        )

    @staticmethod
    def _check(source: str, target: str, n_best: int, max_length: int | None) -> tuple[str, str]:
        src, tgt = get_language(source).nllb, get_language(target).nllb
        if not 1 <= n_best <= MAX_N_BEST:
            raise InvalidInput(
                f"n_best must be between 1 and {MAX_N_BEST}, got {n_best}", code="invalid_n_best"
            )
        if max_length is not None and max_length < 3:
            raise InvalidInput(f"max_length must be >= 3, got {max_length}", code="invalid_length")
        return src, tgt


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
