"""separate: the original voices out of the background, once per job, right after extract_audio.

The job option ``background`` (``keep | separate | drop``; by default ``separate`` when the
manifest says a ``separation`` model is served, else ``keep``, and ``drop`` for the older
``keep_background: false``) decides. ``separate`` writes ``background.wav`` at the mix rate,
the original minus its speech stem (``inference/separation.py``), which every language's mix
then lays under the dub instead of the ducked original, and ``speech16k.wav``, the 16 kHz speech
stem, which diarize, transcribe and gender hear instead of the extracted audio (``speech_audio``).
The model is ``separation_htdemucs`` (HT-Demucs, ``inference/htdemucs.py``, its chunk read
from the served graph's metadata) where the manifest serves it, else the mask net
``separation``. When no model is served or separating fails for a foreseeable reason (Triton
unavailable, the model missing or returning a malformed mask, memory short), the stage falls
back to ``keep`` (ducking, the speech stages hear the extracted audio) with a quality warning:
a dub with the original voices ducked is better than no dub. A bug (``fallback_reason``) still
fails the stage.
"""

from __future__ import annotations

import errno
import logging

from polydub.errors import InternalError, PolydubError
from polydub.orchestrator.artifacts import Artifacts
from polydub.orchestrator.inference.htdemucs import HtDemucsSeparator
from polydub.orchestrator.inference.separation import TritonSeparator
from polydub.orchestrator.pipeline import StageContext, StageResult
from polydub.orchestrator.quality import SeparationStats
from polydub.orchestrator.stages.dub import SKIPPED, quality_warnings, subtitles_only
from polydub.serving.names import SEPARATION, SEPARATION_HTDEMUCS

log = logging.getLogger(__name__)
STAGE = "separate"
MODES = ("keep", "separate", "drop")
# Causes that are bugs in our code, not the model's or the server's failures: never hidden.
BUGS = (TypeError, AttributeError, NameError, AssertionError, NotImplementedError)


async def separation_model(ctx: StageContext) -> str | None:
    """The served separation model: HT-Demucs where the manifest lists it (an export serves one
    at a time; HT-Demucs, the better model, wins should both be listed), else the mask net."""
    served = (await ctx.services.manifest()).models
    return next((m for m in (SEPARATION_HTDEMUCS, SEPARATION) if m in served), None)


async def separation_served(ctx: StageContext) -> bool:
    return await separation_model(ctx) is not None


async def background_mode(ctx: StageContext) -> str:
    asked = ctx.job.options.get("background")
    if asked in MODES:
        return str(asked)
    if ctx.job.options.get("keep_background") is False:
        return "drop"
    return "separate" if await separation_served(ctx) else "keep"


def speech_audio(ctx: StageContext) -> str:
    """The key of the 16 kHz audio the speech stages hear: the speech stem where ``separate``
    made one, the extracted audio otherwise (no separation, a fallback, or a job whose speech
    stages ran before separation did)."""
    if ctx.finished.done(STAGE) and (stem := ctx.outputs_of(STAGE).get("speech16k")):
        return str(stem)
    return str(ctx.outputs_of("extract_audio")["speech16k"])


def fallback_reason(exc: Exception) -> str | None:
    """Why separating failed, for the warning, when ducking should stand in; None for a bug.

    The Triton client maps every failure of a call to a ``PolydubError`` (an unreachable server
    is ``ServiceUnavailable``, a missing model ``ConfigurationError``) and the separation client
    raises one for a malformed mask; an ``InternalError`` that wraps a ``TypeError`` and the like
    is our bug, though. Memory or scratch disk running short on a long input is foreseeable
    too: ducking needs far less of both.
    """
    if isinstance(exc, MemoryError):
        return "separation failed: out_of_memory"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "separation failed: disk_full"
    if not isinstance(exc, PolydubError):
        return None
    if isinstance(exc, InternalError) and isinstance(exc.__cause__, BUGS):
        return None
    return f"separation failed: {exc.code}"


def _fallback(ctx: StageContext, mode: str, reason: str) -> StageResult:
    metrics = SeparationStats(background=mode, used="keep", fallback=reason).to_dict()
    return StageResult({"background": "keep"}, metrics, quality_warnings(ctx, STAGE, metrics))


async def separate_background(ctx: StageContext) -> StageResult:
    if subtitles_only(ctx):
        return SKIPPED
    mode = await background_mode(ctx)
    if mode != "separate":
        return StageResult({"background": mode}, SeparationStats(mode, mode).to_dict())
    model = await separation_model(ctx)
    if model is None:
        return _fallback(ctx, mode, "no separation model is served")
    artifacts = Artifacts(ctx.services.store, ctx.cache_dir)
    original = await artifacts.fetch(ctx.outputs_of("extract_audio")["original48k"])
    speech_path = ctx.workdir / "speech16k.wav"
    separator: TritonSeparator | HtDemucsSeparator  # one per job: its figures are this job's
    try:
        if model == SEPARATION_HTDEMUCS:  # its chunk is the served graph's: Triton's metadata
            separator = await HtDemucsSeparator.served(ctx.services.triton)
        else:
            separator = TritonSeparator(ctx.services.triton)
        path = await separator.separate(
            original, ctx.workdir / "background.wav", speech_wav=speech_path
        )
    except Exception as exc:
        reason = fallback_reason(exc)
        if reason is None:
            raise
        log.warning("job %s: separation failed, ducking instead: %r", ctx.job.id, exc)
        return _fallback(ctx, mode, reason)
    stored = await artifacts.put_file(ctx.key("background.wav"), path, "audio/wav")
    speech = await artifacts.put_file(ctx.key("speech16k.wav"), speech_path, "audio/wav")
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
    outputs = {
        "background": "separate",
        "model": model,  # which separation model made the stems
        "background_wav": stored["key"],
        "speech16k": speech["key"],
    }
    return StageResult(outputs, metrics, quality_warnings(ctx, STAGE, metrics))
