"""validate and extract_audio: make sure the input is media we accept, then decode it once."""

from __future__ import annotations

import asyncio

from polydub.errors import InvalidInput
from polydub.media.extract import extract_audio as extract_media_audio
from polydub.media.probe import probe
from polydub.media.source_url import fetch_source_url
from polydub.orchestrator.artifacts import Artifacts
from polydub.orchestrator.pipeline import StageContext, StageResult


async def validate(ctx: StageContext) -> StageResult:
    services = ctx.services
    artifacts = Artifacts(services.store, ctx.cache_dir)
    etag = ctx.job.input_etag
    source_url = ctx.job.options.get("source_url")
    if isinstance(source_url, str) and etag is None:
        etag = await _fetch_source(ctx, artifacts, source_url)
    source = await artifacts.fetch_input(ctx.job.input_key, etag)
    info = await asyncio.to_thread(probe, source, services.limits)
    start, end = _time_range(ctx.job.options, info.audio_duration)
    media = info.to_dict()
    await services.jobs.record_media(ctx.job, media)
    return StageResult(
        {
            "media": media,
            "has_video": info.has_video,
            "video_codecs": [v.codec for v in info.video],
            "audio_duration": info.audio_duration,
            "audio_offset": info.audio_offset,
            "start": start,
            "end": end,
            "input_etag": etag,
        },
        {"duration": info.duration, "format": info.format_name, "size_bytes": info.size_bytes},
    )


async def _fetch_source(ctx: StageContext, artifacts: Artifacts, url: str) -> str:
    """Download the job's source_url to its input key (the API never fetches it) and pin it;
    its ETag, for this attempt's later reads."""
    path = ctx.workdir / "source"
    fetched = await fetch_source_url(url, path, ctx.services.settings)
    stored = await artifacts.put_file(
        ctx.job.input_key, path, fetched.content_type or "application/octet-stream"
    )
    etag = (await ctx.services.store.stat(ctx.job.input_key)).etag
    await ctx.services.jobs.record_input(ctx.job, etag, stored["size"], fetched.filename)
    return etag


def _time_range(options: dict[str, object], duration: float) -> tuple[float, float]:
    start = float(options.get("start_time") or 0.0)  # type: ignore[arg-type]
    end_value = options.get("end_time")
    end = float(end_value) if end_value is not None else duration  # type: ignore[arg-type]
    end = min(end, duration)
    if not 0.0 <= start < end:
        raise InvalidInput(
            f"time range {start:.2f}..{end:.2f} s is empty for media of {duration:.2f} s",
            code="invalid_time_range",
        )
    return start, end


async def extract_audio(ctx: StageContext) -> StageResult:
    """The whole audio, twice: 16 kHz mono for the models, 48 kHz stereo to mix the dub over.

    A requested time range does not cut the media: only speech inside it is dubbed, and the
    output keeps the full length with the original audio outside the range (the video is never
    re-encoded, and cutting it by stream copy would snap to keyframes).
    """
    facts = ctx.outputs_of("validate")
    artifacts = Artifacts(ctx.services.store, ctx.cache_dir)
    # A source_url job's input was pinned by validate, after this attempt's JobRecord was read.
    etag = ctx.job.input_etag or facts.get("input_etag")
    source = await artifacts.fetch_input(ctx.job.input_key, etag)
    duration = facts["audio_duration"]
    mix_path = ctx.workdir / "original48k.wav"
    speech, mixed = await asyncio.to_thread(
        extract_media_audio, source, mix_path, media_duration=duration
    )  # one decode for both
    speech_key = await artifacts.put_wav(ctx.key("speech16k.wav"), speech, 16000)
    original = await artifacts.put_file(ctx.key("original48k.wav"), mix_path, "audio/wav")
    return StageResult(
        {"speech16k": speech_key, "original48k": original["key"], "duration": mixed.duration},
        {"audio_seconds": round(mixed.duration, 3)},
    )
