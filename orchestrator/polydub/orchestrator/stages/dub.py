"""translate, assign_voices and synthesize: the new speech of one target language."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from polydub.jobs import JobKeys
from polydub.languages import get_language
from polydub.media.mix import render_segments
from polydub.orchestrator.artifacts import Artifacts
from polydub.orchestrator.candidates import Candidate, pick_candidate
from polydub.orchestrator.gates import GateThresholds, enforce, stage_warnings
from polydub.orchestrator.inference.tts import model_name
from polydub.orchestrator.pipeline import StageContext, StageResult
from polydub.orchestrator.quality import fit_stats, translated_stats
from polydub.orchestrator.records import (
    ScoredText,
    Speakers,
    TimedScript,
    Transcript,
    TranslatedTranscript,
    VoiceCast,
)
from polydub.orchestrator.revise import Review, SpeechCache, revised_translation
from polydub.orchestrator.services import Services
from polydub.orchestrator.timing import plan_timing
from polydub.orchestrator.voice_choice import (
    segment_shifts,
    segment_voices,
    with_chosen_voices,
)
from polydub.orchestrator.voices import Gender, Voice, cast_voices, estimate_f0
from polydub.serving import names
from polydub.serving.names import SAMPLE_RATE

N_BEST = 3
VOICE_PROBE_TEXT = "hello and welcome, this is a short test of my voice"


async def translate(ctx: StageContext) -> StageResult:
    services = ctx.services
    artifacts = Artifacts(services.store, ctx.cache_dir)
    target = get_language(ctx.language).code  # unknown: this language fails, the others go on

    async def translate_texts(texts: list[str], source: str, to: str) -> list[list[ScoredText]]:
        results = await services.translation.translate_many(texts, source, to, N_BEST)
        return [[ScoredText(c.text, c.score) for c in r.candidates] for r in results]

    review = Review.of(ctx)
    if review is not None:  # a render of reviewed segments: the edits, not the transcript
        base = TranslatedTranscript.from_json(await artifacts.get_json(review.base))
        script, again = await revised_translation(review, base, translate_texts, choose_candidate)
    else:
        data = await artifacts.get_json(ctx.outputs_of("transcribe")["transcript"])
        transcript = Transcript.from_json(data)
        texts = [s.text for s in transcript.segments]
        results = await translate_texts(texts, transcript.language, target)
        translated = []
        for segment, candidates in zip(transcript.segments, results, strict=True):
            chosen = choose_candidate(candidates, segment.duration)
            translated.append(segment.with_translation(candidates, chosen))
        script = TranslatedTranscript(transcript.language, target, tuple(translated))
    metrics = translated_stats(script.segments).to_dict()
    if review is not None:
        metrics.update(render_version=review.version, retranslated_segments=again)
    # Every translation empty: this language fails here (a warning on random weights).
    noise = enforce("translate", metrics, random_weights=await services.random_weights(["nllb"]))
    key = await artifacts.put_json(ctx.key("translation.json"), script.to_json())
    warnings = quality_warnings(ctx, "translate", metrics) + [w.to_dict() for w in noise]
    return StageResult({"translation": key}, metrics, warnings)


def choose_candidate(candidates: Sequence[Candidate], slot_seconds: float) -> int:
    """The candidate to speak: an empty one is the model stopping at once (it happens on short or
    odd input), never a translation of spoken words, so any other candidate of the n-best wins."""
    worded = [i for i, c in enumerate(candidates) if c.text.strip()]
    if not worded:
        return 0
    return worded[pick_candidate([candidates[i] for i in worded], slot_seconds)]


def quality_warnings(
    ctx: StageContext, stage: str, metrics: dict[str, Any]
) -> list[dict[str, str]]:
    """The gate warnings a stage's figures raise, as the runner records them."""
    limits = GateThresholds.from_settings(ctx.services.settings)
    return [w.to_dict() for w in stage_warnings(stage, metrics, limits)]


def subtitles_only(ctx: StageContext) -> bool:
    """The job asked for subtitles alone: the speech stages have nothing to do."""
    return bool(ctx.job.options.get("subtitles_only"))


SKIPPED = StageResult({"skipped": True}, {"skipped": True})


async def assign_voices(ctx: StageContext) -> StageResult:
    """Each speaker keeps one recognisable voice; with one voice per language (MMS-TTS), a
    per-speaker pitch shift toward the speaker's own pitch keeps speakers apart."""
    if subtitles_only(ctx):
        return SKIPPED
    services = ctx.services
    artifacts = Artifacts(services.store, ctx.cache_dir)
    speakers = Speakers.from_json(await artifacts.get_json(ctx.outputs_of("gender")["speakers"]))
    voice = await _voice(ctx.services, ctx.language)
    assignments = cast_voices(speakers.speakers, [voice])
    review = Review.of(ctx)
    assignments = with_chosen_voices(assignments, review, voice)  # a reviewer's choice
    cast = VoiceCast((voice,), tuple(assignments), segment_voices(review))
    key = await artifacts.put_json(ctx.key("voices.json"), cast.to_json())
    return StageResult(
        {"voices": key}, {"assignments": {a.speaker: round(a.semitones, 2) for a in assignments}}
    )


async def _voice(services: Services, language: str) -> Voice:
    """The language's voice and its own pitch, measured once per worker process."""
    cache_key = f"voice:{language}"
    if cache_key not in services.voice_cache:
        speech = await services.tts.synthesize(VOICE_PROBE_TEXT, language, seed=0)
        f0 = await asyncio.to_thread(estimate_f0, speech.samples, speech.sample_rate)
        f0 = f0 or 150.0  # no voiced frames (e.g. a script the probe text cannot cover)
        gender: Gender = "female" if f0 >= 165.0 else "male"
        services.voice_cache[cache_key] = Voice(model_name(language), gender, round(f0, 1))
    return services.voice_cache[cache_key]


async def synthesize(ctx: StageContext) -> StageResult:
    """MMS-TTS per segment at the speaking rate that fits its slot, then bounded stretch,
    borrowing and pitch shift (timing.py), rendered at 48 kHz for the mix."""
    if subtitles_only(ctx):
        return SKIPPED
    services = ctx.services
    artifacts = Artifacts(services.store, ctx.cache_dir)
    segments = (await read_translation(ctx, artifacts)).segments
    cast = VoiceCast.from_json(await artifacts.get_json(ctx.outputs_of("assign_voices")["voices"]))
    timeline_end = ctx.outputs_of("extract_audio")["duration"]
    seeds = [_seed(ctx.job.id.hex, s.id) for s in segments]
    review = Review.of(ctx)
    cache = SpeechCache(
        services.store,
        JobKeys(ctx.job.id),
        ctx.language,
        reuse=review is not None,
        previous=review.speech_cache if review else None,
    )
    await cache.load()
    voice = names.mms_tts(ctx.language)

    async def speak(i: int, rate: float) -> np.ndarray:  # type: ignore[type-arg]
        # Cached by what the TTS is asked: a render speaks again only the segments it changed.
        key = cache.key(segments[i].translation, voice, rate, seeds[i])
        cached = await cache.get(key)
        if cached is not None:
            return cached
        speech = await services.tts.synthesize(
            segments[i].translation, ctx.language, speaking_rate=rate, seed=seeds[i]
        )
        samples = np.asarray(speech.samples, np.float32)
        cache.put(key, samples)
        return samples

    first = await asyncio.gather(*(speak(i, 1.0) for i in range(len(segments))))
    await ctx.report(1, 3)
    natural = [a.size / SAMPLE_RATE for a in first]
    plan = plan_timing(segments, natural, timeline_end=timeline_end, policy=services.timing)
    audio = list(first)
    again = plan.to_resynthesize
    for i, samples in zip(
        again, await asyncio.gather(*(speak(i, plan.segments[i].rate) for i in again)), strict=True
    ):
        audio[i] = samples
    await ctx.report(2, 3)
    final = plan_timing(
        segments,
        natural,
        timeline_end=timeline_end,
        synthesized=[a.size / SAMPLE_RATE for a in audio],
        policy=services.timing,
    )
    spoken = [i for i, s in enumerate(segments) if s.translation.strip()]
    metrics = {
        **fit_stats(final.segments).to_dict(),
        "spoken_segments": len(spoken),
        "silent_segments": sum(1 for i in spoken if audio[i].size == 0),
        "cached_speech": cache.hits,
    }
    # No second of speech to dub: this language fails here (a warning on random weights).
    noise = enforce("synthesize", metrics, random_weights=await services.random_weights([voice]))
    semitones = segment_shifts(cast, review, segments)  # a chosen voice: its pitch
    rendered = await asyncio.to_thread(
        render_segments, audio, SAMPLE_RATE, final.segments, semitones
    )
    speech_path = ctx.workdir / "speech48k.npz"
    np.savez(speech_path, *rendered)
    speech = await artifacts.put_file(
        ctx.key("speech48k.npz"), speech_path, "application/octet-stream"
    )
    timed = TimedScript(
        tuple(
            s.with_timing(t, p) for s, t, p in zip(segments, final.segments, semitones, strict=True)
        )
    )
    timing_key = await artifacts.put_json(ctx.key("timing.json"), timed.to_json())
    said = await cache.save(ctx.key("speech_cache.npz"))  # what a render of this reuses
    return StageResult(
        {"speech": speech["key"], "timing": timing_key, "speech_cache": said},
        metrics,
        quality_warnings(ctx, "synthesize", metrics) + [w.to_dict() for w in noise],
    )


async def read_translation(ctx: StageContext, artifacts: Artifacts) -> TranslatedTranscript:
    """This language's translated segments (the translate stage's output)."""
    data = await artifacts.get_json(ctx.outputs_of("translate")["translation"])
    return TranslatedTranscript.from_json(data)


async def read_timing(ctx: StageContext, artifacts: Artifacts) -> TimedScript:
    """This language's timed segments (the synthesize stage's output, with its translation)."""
    data = await artifacts.get_json(ctx.outputs_of("synthesize")["timing"])
    return TimedScript.from_json(data, await read_translation(ctx, artifacts))


def _seed(job: str, segment: int) -> int:
    # Deterministic per segment: a redelivered job synthesizes the same speech again.
    return int.from_bytes(hashlib.sha256(f"{job}:{segment}".encode()).digest()[:4], "big") % (2**31)
