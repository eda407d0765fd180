"""separate: the original voices out of the background, once per job, before the mixes.

The job option ``background`` (``keep | separate | drop``; by default ``separate`` when the
manifest says a ``separation`` model is served, else ``keep``, and ``drop`` for the older
``keep_background: false``) decides. ``separate`` writes ``background.wav`` at the mix rate,
the original minus its speech stem (``inference/separation.py``), which every language's mix
then lays under the dub instead of the ducked original. When no model is served or separating
fails, the stage falls back to ``keep`` (ducking) with a quality warning: a dub with the original
voices ducked is better than no dub.
"""

from __future__ import annotations

import logging

from polydub.errors import PolydubError
from polydub.orchestrator.artifacts import Artifacts
from polydub.orchestrator.inference.separation import TritonSeparator
from polydub.orchestrator.pipeline import StageContext, StageResult
from polydub.orchestrator.quality import SeparationStats
from polydub.orchestrator.stages.dub import SKIPPED, quality_warnings, subtitles_only
from polydub.serving.names import SEPARATION

log = logging.getLogger(__name__)
STAGE = "separate"
MODES = ("keep", "separate", "drop")


async def separation_served(ctx: StageContext) -> bool:
    return SEPARATION in (await ctx.services.manifest()).models


async def background_mode(ctx: StageContext) -> str:
    asked = ctx.job.options.get("background")
    if asked in MODES:
        return str(asked)
    if ctx.job.options.get("keep_background") is False:
        return "drop"
    return "separate" if await separation_served(ctx) else "keep"


def _fallback(ctx: StageContext, mode: str, reason: str) -> StageResult:
    metrics = SeparationStats(background=mode, used="keep", fallback=reason).to_dict()
    return StageResult({"background": "keep"}, metrics, quality_warnings(ctx, STAGE, metrics))


async def separate_background(ctx: StageContext) -> StageResult:
    if subtitles_only(ctx):
        return SKIPPED
    mode = await background_mode(ctx)
    if mode != "separate":
        return StageResult({"background": mode}, SeparationStats(mode, mode).to_dict())
    if not await separation_served(ctx):
        return _fallback(ctx, mode, "no separation model is served")
    artifacts = Artifacts(ctx.services.store, ctx.cache_dir)
    original = await artifacts.fetch(ctx.outputs_of("extract_audio")["original48k"])
    separator = TritonSeparator(ctx.services.triton)  # one per job: its figures are this job's
    try:
        path = await separator.separate(original, ctx.workdir / "background.wav")
    except PolydubError as exc:
        log.warning("job %s: separation failed, ducking instead: %s", ctx.job.id, exc)
        return _fallback(ctx, mode, f"separation failed: {exc.code}")
    stored = await artifacts.put_file(ctx.key("background.wav"), path, "audio/wav")
    figures = separator.figures
    assert figures is not None  # set by every separate() that returns
    stats = SeparationStats(
        background=mode,
        used="separate",
        seconds=figures.seconds,
        chunks=figures.chunks,
        speech_ratio_db=figures.speech_ratio_db,
        elapsed_s=figures.elapsed_s,
        realtime_factor=figures.realtime_factor,
    )
    metrics = stats.to_dict()
    outputs = {"background": "separate", "background_wav": stored["key"]}
    return StageResult(outputs, metrics, quality_warnings(ctx, STAGE, metrics))
