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

Overload: a request's deadline is derived from the target tokens it may decode (segments x
expected length): one ``translate`` counts its own segment, every segment of ``translate_many``
gets the deadline of all the call's segments (they are batched together, so the first waits for
the last), and both add the work this client already has in flight (``WorkDeadlines``). At most
``max_in_flight`` requests are in flight (the others wait here, not in Triton's bounded queue).
When one segment of ``translate_many`` fails, the others are cancelled, and so are their gRPC
calls: Triton drops them instead of translating segments whose job will be redelivered anyway.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from polydub.errors import InvalidInput
from polydub.infra.triton import Deadline, WorkDeadlines
from polydub.languages import get_language
from polydub.serving.names import NLLB, NllbOut
from polydub.settings import get_settings

T = TypeVar("T")
MODEL = NLLB
# The deadline translate_many computed for all its segments; its tasks inherit it. (A context
# variable, not a parameter: subclasses override translate() with the public signature.)
_CALL_DEADLINE: ContextVar[float | None] = ContextVar("translation_call_deadline", default=None)
OUTPUTS = (NllbOut.TRANSLATIONS, NllbOut.SCORES)
MAX_N_BEST = 8  # the decoder graph returns 16 candidates per row: beams up to 8
MAX_CHARACTERS = 2000  # one dubbing segment; the server keeps at most 256 source tokens
# The server's default target length (model_repository/nllb/config.pbtxt: max_len_a * source
# tokens + max_len_b, at most max_length_cap), estimated here without the tokenizer: SentencePiece
# averages ~4 characters a token in Latin scripts, fewer elsewhere, so 3 errs long.
MAX_LEN_A, MAX_LEN_B, MAX_LENGTH_CAP, MAX_SOURCE_TOKENS = 2.0, 16, 256, 256
CHARACTERS_PER_TOKEN = 3.0


class Triton(Protocol):
    """What this module needs from Triton: ``polydub.infra.triton.InferenceClient`` fits."""

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        *,
        deadline: float | None = None,
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
    def __init__(
        self,
        triton: Triton,
        *,
        model: str = MODEL,
        deadline: Deadline | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        """``deadline``: per target token (default: the settings'
        ``triton_translation_seconds_per_token`` over ``triton_deadline_floor_seconds``);
        ``max_in_flight``: default ``triton_translation_max_in_flight``."""
        settings = get_settings()
        self.triton = triton
        self.model = model
        self.deadlines = WorkDeadlines(
            deadline or Deadline.from_settings(settings.triton_translation_seconds_per_token)
        )
        self._slots = asyncio.Semaphore(max_in_flight or settings.triton_translation_max_in_flight)

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

        deadline = _CALL_DEADLINE.get()
        if deadline is not None:
            async with self._slots:
                result = await self._infer(text, src, tgt, n_best, max_length, deadline)
        else:
            with self.deadlines.admit(expected_tokens(text, max_length)) as deadline:
                async with self._slots:
                    result = await self._infer(text, src, tgt, n_best, max_length, deadline)
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
        """Translate segments concurrently (one request each), so they share Triton batches.
        The first error cancels the other segments' calls and is raised."""
        self._check(source, target, n_best, max_length)
        units = sum(expected_tokens(t, max_length) for t in texts if t.strip())
        with self.deadlines.admit(0 if source == target else units) as deadline:
            token = _CALL_DEADLINE.set(deadline)
            try:
                return await gather_or_cancel(
                    [
                        self.translate(t, source, target, n_best, max_length=max_length)
                        for t in texts
                    ]
                )
            finally:
                _CALL_DEADLINE.reset(token)

    async def _infer(
        self,
        text: str,
        src: str,
        tgt: str,
        n_best: int,
        max_length: int | None,
        deadline: float,
    ) -> dict[str, NDArray[Any]]:
        return await self.triton.infer(
            self.model,
            {
                "text": np.array([[text.encode("utf-8")]], dtype=np.object_),
                "src_lang": np.array([[src.encode()]], dtype=np.object_),
                "tgt_lang": np.array([[tgt.encode()]], dtype=np.object_),
                "n_best": np.array([[n_best]], dtype=np.int32),
                "max_length": np.array([[max_length or 0]], dtype=np.int32),
            },
            OUTPUTS,
            deadline=deadline,
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


def expected_tokens(text: str, max_length: int | None) -> int:
    """The target tokens the server may decode for ``text``: the unit of its deadline."""
    if max_length:
        return min(max_length, MAX_LENGTH_CAP)
    characters = len(text.strip())
    source = min(math.ceil(characters / CHARACTERS_PER_TOKEN) + 2, MAX_SOURCE_TOKENS)
    return min(int(MAX_LEN_A * source + MAX_LEN_B), MAX_LENGTH_CAP)


async def gather_or_cancel(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Every call's result in order; on the first error the others are cancelled (a cancelled
    task cancels its gRPC call) and awaited, then that error is raised: ``asyncio.gather`` would
    leave them running, still occupying Triton for a stage that has already failed."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
