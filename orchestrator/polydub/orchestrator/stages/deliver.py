"""mix, mux and subtitles: the deliverables of one target language, registered as artifacts
(their kinds: polydub.jobs.ArtifactKind)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.errors import PolydubError
from polydub.jobs import ArtifactKind
from polydub.media.mix import Placement, background_track, mix_to_wav, speech_intervals
from polydub.media.mux import encode_audio
from polydub.media.mux import mux as mux_media
from polydub.media.pcm import create_wav, wav_info
from polydub.media.preview import encode_rendition
from polydub.orchestrator.artifacts import Artifacts
from polydub.orchestrator.gates import GateThresholds, QualityIssue, no_speech, report_warnings
from polydub.orchestrator.pipeline import StageContext, StageResult
from polydub.orchestrator.quality import loudness_stats
from polydub.orchestrator.records import Speakers, deliverable_transcript
from polydub.orchestrator.revise import Review
from polydub.orchestrator.stages.dub import (
    SKIPPED,
    quality_warnings,
    read_timing,
    read_translation,
    subtitles_only,
)
from polydub.orchestrator.subtitles import dub_cues, make_cues, to_srt, to_vtt
from polydub.serving import names

log = logging.getLogger(__name__)

# (of the source language?, format) -> the subtitles' kind
_SUBTITLES = {
    (True, "srt"): ArtifactKind.SOURCE_SUBTITLES_SRT,
    (True, "vtt"): ArtifactKind.SOURCE_SUBTITLES_VTT,
    (False, "srt"): ArtifactKind.SUBTITLES_SRT,
    (False, "vtt"): ArtifactKind.SUBTITLES_VTT,
}


async def mix(ctx: StageContext) -> StageResult:
    """The dub over the original background: ducked under speech, EBU R128 normalised.

    The background is the ``separate`` stage's stem when it separated one (barely ducked), the
    original otherwise; with ``background: drop`` (or ``keep_background`` false) the dub is mixed
    over silence of the same length.
    """
    if subtitles_only(ctx):
        return SKIPPED
    services = ctx.services
    artifacts = Artifacts(services.store, ctx.cache_dir)
    original = await artifacts.fetch(ctx.outputs_of("extract_audio")["original48k"])
    separation = ctx.finished.get("separate") if ctx.finished.done("separate") else {}
    dropped = separation.get("background") == "drop"
    if dropped or ctx.job.options.get("keep_background") is False:
        original = await asyncio.to_thread(_silence_like, original, ctx.workdir / "silence.wav")
    synth = ctx.outputs_of("synthesize")
    timings = (await read_timing(ctx, artifacts)).timings
    rendered = await asyncio.to_thread(_load_speech, await artifacts.fetch(synth["speech"]))
    placements = [Placement(t.start, r) for t, r in zip(timings, rendered, strict=True)]
    if separation.get("background_wav") and not dropped:
        background, separated = await artifacts.fetch(separation["background_wav"]), True
    else:
        background, separated = await background_track(
            original, ctx.workdir / "background.wav", services.separator
        )
    out = ctx.workdir / "dubbed.wav"
    result = await asyncio.to_thread(
        mix_to_wav,
        background,
        placements,
        out,
        intervals=speech_intervals(timings),
        separated=separated,
        policy=services.mix,
        gain_db=review.gain_db if (review := Review.of(ctx)) else None,
    )
    stored = await artifacts.put_file(ctx.key("dubbed.wav"), out, "audio/wav")
    stats = loudness_stats(
        result.loudness.integrated_lufs,
        result.loudness.true_peak_dbtp,
        result.loudness.lra,
        target_lufs=services.mix.target_lufs,
        gain_db=result.gain_db,
        clipped_samples=result.clipped_samples,
        total_samples=result.frames * result.channels,
    )
    metrics = {
        **stats.to_dict(),
        "ducked_seconds": round(result.ducked_seconds, 3),
        "background_separated": separated,
    }
    return StageResult(
        {"dubbed_wav": stored["key"]}, metrics, quality_warnings(ctx, "mix", metrics)
    )


async def mux(ctx: StageContext) -> StageResult:
    """The dubbed video (video stream copied, never re-encoded) and the dubbed audio track;
    for a video MP4 cannot hold by copy (so in Matroska), a preview rendition too."""
    if subtitles_only(ctx):
        return SKIPPED
    services = ctx.services
    artifacts = Artifacts(services.store, ctx.cache_dir)
    facts = ctx.outputs_of("validate")
    dubbed = await artifacts.fetch(ctx.outputs_of("mix")["dubbed_wav"])
    outputs: dict[str, Any] = {}
    audio_path = ctx.workdir / "dubbed.m4a"
    await asyncio.to_thread(
        encode_audio, dubbed, audio_path, language=ctx.language, duration=facts["audio_duration"]
    )
    outputs[ArtifactKind.DUBBED_AUDIO] = await _artifact(
        ctx, artifacts, ArtifactKind.DUBBED_AUDIO, "dubbed.m4a", audio_path, "audio/mp4"
    )
    if facts["has_video"]:
        source = await artifacts.fetch_input(ctx.job.input_key, ctx.job.input_etag)
        video_path = ctx.workdir / "dubbed.video"
        result = await asyncio.to_thread(
            mux_media,
            source,
            audio_path,  # the AAC just encoded, copied: the dub is encoded once
            video_path,
            video_codecs=facts["video_codecs"],
            language=ctx.language,
            audio_offset=facts["audio_offset"],
            copy_audio=True,
            duration=facts["audio_duration"],
        )
        name, content_type = (
            ("dubbed.mp4", "video/mp4")
            if result.container == "mp4"
            else ("dubbed.mkv", "video/x-matroska")
        )
        outputs[ArtifactKind.DUBBED_VIDEO] = await _artifact(
            ctx, artifacts, ArtifactKind.DUBBED_VIDEO, name, video_path, content_type
        )
        if result.container != "mp4":
            rendition = await _preview_rendition(ctx, artifacts, video_path, facts)
            if rendition:
                outputs[ArtifactKind.PREVIEW_VIDEO] = rendition
    return StageResult(outputs, {"has_video": facts["has_video"]})


async def _preview_rendition(
    ctx: StageContext, artifacts: Artifacts, dubbed: Path, facts: dict[str, Any]
) -> str | None:
    """The API cuts previews by stream copy into MP4 only; a video MP4 cannot hold by copy gets
    a small H.264 rendition here, in the worker. Optional: if it cannot be made, the job still
    succeeds and its previews answer 409 preview_unavailable."""
    out = ctx.workdir / "preview.mp4"
    try:
        await asyncio.to_thread(
            encode_rendition,
            dubbed,
            out,
            grid=ctx.services.settings.preview_grid_seconds,
            duration=facts["audio_duration"],
        )
    except PolydubError as exc:
        log.warning("no preview rendition", extra={"code": exc.code, "error": exc.message})
        return None
    kind = ArtifactKind.PREVIEW_VIDEO
    return await _artifact(ctx, artifacts, kind, "preview.mp4", out, "video/mp4")


async def subtitles(ctx: StageContext) -> StageResult:
    """SRT and WebVTT (source and target), the transcript, and the quality report."""
    artifacts = Artifacts(ctx.services.store, ctx.cache_dir)
    script = await read_translation(ctx, artifacts)
    outputs: dict[str, Any] = {}
    for prefix, lang, cues in (
        ("source_", script.source, make_cues(script.segments)),
        ("", script.target, dub_cues(script.segments)),
    ):
        for fmt, render, content_type in (
            ("srt", to_srt, "application/x-subrip"),
            ("vtt", to_vtt, "text/vtt"),
        ):
            path = ctx.workdir / f"{prefix}{lang}.{fmt}"
            path.write_text(render(cues), encoding="utf-8")
            kind = _SUBTITLES[(bool(prefix), fmt)]
            outputs[kind] = await _artifact(ctx, artifacts, kind, path.name, path, content_type)

    speakers = Speakers.from_json(await artifacts.get_json(ctx.outputs_of("gender")["speakers"]))
    transcript = deliverable_transcript(str(ctx.job.id), script, speakers)
    for kind, data in (
        (ArtifactKind.TRANSCRIPT, transcript),
        (ArtifactKind.QUALITY_REPORT, await quality_report(ctx)),
    ):
        path = ctx.workdir / f"{kind}.json"
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        outputs[kind] = await _artifact(ctx, artifacts, kind, path.name, path, "application/json")
    return StageResult(outputs, {"cues": len(script.segments)})


async def quality_report(ctx: StageContext) -> dict[str, Any]:
    """Per-stage metrics of this job and language, as the stages recorded them, and the
    quality-gate warnings they raise (the job's and this language's)."""
    stages = await ctx.services.jobs.stage_metrics(ctx.job.id, ctx.language)
    artifacts = Artifacts(ctx.services.store, ctx.cache_dir)
    # A subtitles-only job skipped synthesize: nothing was timed.
    timed = await read_timing(ctx, artifacts) if "timing" in ctx.outputs_of("synthesize") else None
    limits = GateThresholds.from_settings(ctx.services.settings)
    models = (await ctx.services.manifest()).summary(served_models(ctx.language))
    warnings = [w.to_dict() for w in report_warnings(stages, limits)]
    if models["random_weights"]:
        families = ", ".join(models["random_weights"])
        warnings.append(
            QualityIssue(
                "random_weights",
                f"served with random weights (tiny), so their output is noise: {families}",
                "deliver",
            ).to_dict()
        )
    return {
        "job_id": str(ctx.job.id),
        "language": ctx.language,
        "no_speech": no_speech(stages),
        "warnings": warnings,
        "models": models,
        "stages": stages,
        "segments": [t.to_dict() for t in timed.timings] if timed else [],
    }


def served_models(language: str) -> list[str]:
    """The Triton models a job into ``language`` calls (the segmentation and the separation
    only where served)."""
    return [
        names.SILERO_VAD,
        names.SEPARATION,
        names.SEPARATION_HTDEMUCS,
        names.PYANNOTE_SEGMENTATION,
        names.SPEAKER_EMBEDDING,
        names.WHISPER,
        names.GENDER,
        names.NLLB,
        names.mms_tts(language),
    ]


def _load_speech(path: Path) -> list[NDArray[np.float32]]:
    """The synthesize stage's rendered segments, in order (read off the event loop)."""
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def _silence_like(wav: Path, out: Path) -> Path:
    """A silent WAV of the same length, rate and channels (create_wav zero-fills)."""
    info = wav_info(wav)
    create_wav(out, info.frames, info.channels, info.sample_rate).flush()
    return out


async def _artifact(
    ctx: StageContext,
    artifacts: Artifacts,
    kind: ArtifactKind,
    name: str,
    path: Any,
    content_type: str,
) -> str:
    key = ctx.key(name)
    stored = await artifacts.put_file(key, path, content_type)
    await ctx.services.jobs.add_artifact(
        ctx.job, ctx.language, kind, key, content_type, stored["size"], stored["sha256"]
    )
    return key
