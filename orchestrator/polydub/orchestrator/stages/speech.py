"""diarize, transcribe and gender: who speaks when, what they say, and how their voice sounds.

These run once per job; every target language reuses them. They hear the separated speech stem
when the ``separate`` stage (right before them) made one, the extracted audio otherwise.
"""

from __future__ import annotations

import asyncio

import numpy as np

from polydub.orchestrator.artifacts import Artifacts
from polydub.orchestrator.gates import GateThresholds, stage_warnings
from polydub.orchestrator.inference.asr import AudioRegion
from polydub.orchestrator.pipeline import StageContext, StageResult
from polydub.orchestrator.quality import transcript_stats
from polydub.orchestrator.records import (
    Diarization,
    Segment,
    Span,
    Speaker,
    Speakers,
    Transcript,
    Turn,
)
from polydub.orchestrator.segments import make_segments
from polydub.orchestrator.speaker_turns import diarize
from polydub.orchestrator.stages.separate import speech_audio
from polydub.orchestrator.voices import estimate_f0
from polydub.serving.names import SAMPLE_RATE

GENDER_SAMPLE_SECONDS = 30.0  # enough voiced speech for a stable median pitch


async def diarize_speakers(ctx: StageContext) -> StageResult:
    services = ctx.services
    artifacts = Artifacts(services.store, ctx.cache_dir)
    window = ctx.outputs_of("validate")
    audio, _ = await artifacts.get_wav(speech_audio(ctx))
    await ctx.report(0, 3)
    regions = await services.vad.speech_regions(audio)
    await ctx.report(1, 3)
    num_speakers = ctx.job.options.get("num_speakers")
    turns = await diarize(audio, num_speakers, client=services.diarization, speech=regions)
    await ctx.report(2, 3)
    segments = make_segments(turns, regions, window=(window["start"], window["end"]))
    speakers = sorted({s.speaker for s in segments})
    found = Diarization(
        tuple(Span(float(r.start), float(r.end)) for r in regions),
        tuple(Turn(float(t.start), float(t.end), t.speaker) for t in turns),
        tuple(segments),
    )
    key = await artifacts.put_json(ctx.key("segments.json"), found.to_json())
    speech_seconds = sum(s.duration for s in segments)
    return StageResult(
        {"segments": key, "speakers": speakers},
        {
            "speakers_found": len(speakers),
            "segments": len(segments),
            "speech_seconds": round(speech_seconds, 3),
            "vad_regions": len(regions),
        },
    )


async def transcribe(ctx: StageContext) -> StageResult:
    """Whisper on the segments, packed into shared 30 s windows (one batch for the encoder)."""
    services = ctx.services
    artifacts = Artifacts(services.store, ctx.cache_dir)
    audio, _ = await artifacts.get_wav(speech_audio(ctx))
    segments = await _segments(ctx, artifacts)
    regions = [AudioRegion(s.start, _cut(audio, s.start, s.end)) for s in segments]
    results = await services.asr.transcribe_packed(regions, ctx.job.source_language)
    language = results[0].language if results else (ctx.job.source_language or "eng")
    probability = results[0].language_probability if results else 0.0
    transcribed = []
    for segment, result in zip(segments, results, strict=True):
        logprobs = [s.avg_logprob for s in result.segments]
        no_speech = [s.no_speech_prob for s in result.segments]
        transcribed.append(
            segment.with_text(
                result.text,
                avg_logprob=float(np.mean(logprobs)) if logprobs else None,
                no_speech_prob=float(np.max(no_speech)) if no_speech else None,
            )
        )
    if ctx.job.source_language is None:
        await services.jobs.record_media(ctx.job, None, detected=language)
    transcript = Transcript(language, probability, tuple(transcribed))
    key = await artifacts.put_json(ctx.key("transcript.json"), transcript.to_json())
    metrics = {
        "language": language,
        "language_probability": round(probability, 4),
        "language_detected": ctx.job.source_language is None,
        **transcript_stats(transcript.segments).to_dict(),
        "spoken_segments": sum(1 for s in transcribed if s.text.strip()),
    }
    limits = GateThresholds.from_settings(services.settings)
    return StageResult(
        {"transcript": key, "language": language},
        metrics,
        [w.to_dict() for w in stage_warnings("transcribe", metrics, limits)],
    )


async def detect_gender(ctx: StageContext) -> StageResult:
    """Per speaker: gender from pitch (served by Triton) and median F0 for voice matching."""
    services = ctx.services
    artifacts = Artifacts(services.store, ctx.cache_dir)
    audio, _ = await artifacts.get_wav(speech_audio(ctx))
    by_speaker: dict[str, list[Segment]] = {}
    for segment in await _segments(ctx, artifacts):
        by_speaker.setdefault(segment.speaker, []).append(segment)

    async def profile(speaker: str, items: list[Segment]) -> Speaker:
        clips, total = [], 0.0
        for s in sorted(items, key=lambda s: s.duration, reverse=True):
            if total >= GENDER_SAMPLE_SECONDS:
                break
            clips.append(_cut(audio, s.start, s.end))
            total += s.duration
        speech = np.concatenate(clips) if clips else np.zeros(0, np.float32)
        estimate = await services.gender.classify(speech)
        f0 = estimate.median_f0_hz or await asyncio.to_thread(estimate_f0, speech, SAMPLE_RATE)
        return Speaker(
            speaker=speaker,
            gender=estimate.label,
            median_f0=round(f0, 1) if f0 else None,
            confidence=round(estimate.confidence, 3),
            speaking_seconds=round(sum(s.duration for s in items), 3),
        )

    profiles = await asyncio.gather(*(profile(s, items) for s, items in by_speaker.items()))
    profiles.sort(key=lambda p: p.speaking_seconds, reverse=True)  # main speakers first
    speakers = Speakers(tuple(profiles))
    key = await artifacts.put_json(ctx.key("speakers.json"), speakers.to_json())
    return StageResult({"speakers": key}, {"speakers": {p.speaker: p.gender for p in profiles}})


async def _segments(ctx: StageContext, artifacts: Artifacts) -> tuple[Segment, ...]:
    data = await artifacts.get_json(ctx.outputs_of("diarize")["segments"])
    return Diarization.from_json(data).segments


def _cut(audio: np.ndarray, start: float, end: float) -> np.ndarray:  # type: ignore[type-arg]
    return np.ascontiguousarray(audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)])
