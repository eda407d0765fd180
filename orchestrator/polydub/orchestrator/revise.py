"""A render of reviewed segments (polydub.review): what the edits change, and nothing else.

The API leaves a ``review`` stage record for the language (its outputs: the edited state, the
translation.json it was edited from, and the mix gain of the render before) and re-queues the
language from translate. Here, translate takes the edited words (re-translating a segment only
where its source text changed and its translation did not), and synthesize finds every segment
it spoke before in the speech cache, keyed by what the TTS was asked: so only what changed is
spoken again, and an unchanged segment is placed sample for sample where it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys
from polydub.orchestrator.pipeline import StageContext
from polydub.orchestrator.records import ScoredText, Translated, TranslatedTranscript
from polydub.review import ReviewState

REVIEW_STAGE = "review"  # the record the API's render leaves (polydub.api.db.review)


@dataclass(frozen=True)
class Review:
    state: ReviewState
    base: str  # key of the translation.json the edits were made on
    gain_db: float | None  # the mix gain of the render before: kept, so loudness stays put
    version: int
    # What the TTS said in the run before (SpeechCache), None for jobs made before it was one
    # object per language.
    speech_cache: str | None = None

    @classmethod
    def of(cls, ctx: StageContext) -> Review | None:
        """The language's pending render, if this run is one."""
        if not ctx.finished.done(REVIEW_STAGE, ctx.language):
            return None
        data = ctx.finished.get(REVIEW_STAGE, ctx.language)
        gain = data.get("gain_db")
        return cls(
            ReviewState.from_json(data["state"]),
            str(data["base"]),
            None if gain is None else float(gain),
            int(data.get("version") or 1),
            None if data.get("speech_cache") is None else str(data["speech_cache"]),
        )


Translate = Callable[[list[str], str, str], Awaitable[list[list[ScoredText]]]]
Choose = Callable[[list[ScoredText], float], int]  # candidates, slot seconds -> the one to speak


async def revised_translation(
    review: Review, base: TranslatedTranscript, translate: Translate, choose: Choose
) -> tuple[TranslatedTranscript, int]:
    """The edited segments as translate's output, and how many were translated again (an
    added segment with no translation is translated here; a deleted one is simply absent, so
    nothing is spoken in its span)."""
    by_id = {s.id: s for s in base.segments}
    again = [
        s
        for s in review.state.segments
        if (
            s.id in by_id
            and s.source_text != by_id[s.id].text
            and s.translation == by_id[s.id].translation
        )
        or (s.id not in by_id and not s.translation.strip() and s.source_text.strip())
    ]
    fresh: dict[int, list[ScoredText]] = {}
    if again:
        results = await translate([s.source_text for s in again], base.source, base.target)
        fresh = {s.id: r for s, r in zip(again, results, strict=True)}
    segments = []
    for s in review.state.segments:
        before = by_id.get(s.id)
        if fresh.get(s.id):
            candidates = tuple(fresh[s.id])
            chosen = choose(fresh[s.id], s.end - s.start)
        elif before is not None and s.translation == before.translation:
            candidates, chosen = before.candidates, before.chosen
        else:  # a person's words: the only candidate
            candidates, chosen = (ScoredText(s.translation, 0.0),), 0
        segments.append(
            Translated(
                id=s.id,
                start=s.start,
                end=s.end,
                speaker=s.speaker,
                text=s.source_text,
                avg_logprob=before.avg_logprob if before else None,
                no_speech_prob=before.no_speech_prob if before else None,
                translation=candidates[chosen].text,
                chosen=chosen,
                candidates=candidates,
            )
        )
    return TranslatedTranscript(base.source, base.target, tuple(segments)), len(again)


class SpeechCache:
    """What the TTS said, per request (text, voice, rate, seed): a render speaks again only what
    changed. One object per language and run (``save``, the synthesize stage's output), not one
    per segment: a job pays one S3 write for it, and a render one read (``load``) of the run
    before's. Only a render reads it (``reuse``). Jobs from before (no such object) are read the
    old way: an object per request under ``JobKeys.speech_cache``."""

    def __init__(
        self,
        store: ObjectStore,
        job: JobKeys,
        language: str,
        *,
        reuse: bool,
        previous: str | None = None,
    ) -> None:
        self.store = store
        self.prefix = job.speech_cache(language)
        self.reuse = reuse
        self.previous = previous
        self.hits = 0
        self.known: dict[str, NDArray[np.float32]] = {}
        self.said: dict[str, NDArray[np.float32]] = {}  # this run's requests, saved as one

    def key(self, text: str, voice: str, rate: float, seed: int) -> str:
        request = json.dumps([text, voice, round(rate, 6), seed], ensure_ascii=False)
        return hashlib.sha256(request.encode()).hexdigest()

    async def load(self) -> None:
        """The run before's speech, in one read (a render only)."""
        if self.reuse and self.previous:
            data = await self.store.get_bytes(self.previous)
            # A whole language's speech: decoding it off the event loop
            self.known = await asyncio.to_thread(_read_speech, data)

    async def get(self, key: str) -> NDArray[np.float32] | None:
        found = self.known.get(key)
        if found is None and self.reuse and self.previous is None:
            found = await self._legacy(f"{self.prefix}{key}.npy")
        if found is not None:
            self.hits += 1
            self.said[key] = found
        return found

    def put(self, key: str, samples: NDArray[np.float32]) -> None:
        self.said[key] = samples

    async def save(self, key: str) -> str:
        """Every request of this run as one object at ``key`` (the stage's own); returns it."""
        data = await asyncio.to_thread(_write_speech, dict(self.said))  # off the loop
        await self.store.put_bytes(key, data, "application/octet-stream")
        return key

    async def _legacy(self, key: str) -> NDArray[np.float32] | None:
        if not await self.store.exists(key):
            return None
        loaded: NDArray[Any] = np.load(io.BytesIO(await self.store.get_bytes(key)))
        return loaded.astype(np.float32, copy=False)


def _read_speech(data: bytes) -> dict[str, NDArray[np.float32]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as saved:
        return {name: saved[name].astype(np.float32) for name in saved.files}


def _write_speech(said: Mapping[str, NDArray[np.float32]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **said)  # plain arrays: read back with allow_pickle=False
    return buffer.getvalue()
