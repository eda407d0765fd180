"""Preview clips without encoding where they are served.

The API cuts a preview by stream copy only (``cut_args``, checked by ``copy_only``): a copy is
a demux and a mux, milliseconds of CPU, whatever the clip's length. A dubbed video the MP4 muxer
cannot take by copy (VP8, Theora: the mux stage put it in Matroska) gets a preview rendition in
the worker instead, during the job (``encode_rendition``): H.264/AAC in MP4 at most 360 lines,
with a keyframe on every grid point, so a copy cut on the grid starts exactly where asked.

Ranges snap outward to the grid (``snap``): nearby ranges are one cached clip, and a job has a
bounded number of them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from polydub.errors import InternalError

from .runner import file_input, file_url, run_ffmpeg

# Options that make ffmpeg encode (unless their value is "copy") or filter (always).
_CODEC_OPTIONS = frozenset({"-c", "-codec", "-vcodec", "-acodec", "-scodec"})
_FILTER_OPTIONS = frozenset({"-vf", "-af", "-filter", "-filter_complex", "-lavfi"})


def snap(start: float, end: float, grid: float, limit: float) -> tuple[float, float]:
    """[start, end] widened to grid points, at most ``limit`` long (rounded down to the grid,
    one grid step at least)."""
    span = max(grid, math.floor(limit / grid + 1e-9) * grid)
    first = math.floor(start / grid + 1e-9) * grid
    last = max(math.ceil(end / grid - 1e-9) * grid, first + grid)
    return float(first), float(min(last, first + span))


def copy_only(args: Sequence[str]) -> None:
    """Refuse arguments that would encode or filter (a codec other than ``copy``, a filter):
    the guard that keeps every preview cut a stream copy."""
    for option, value in zip(args, [*args[1:], ""], strict=True):
        name = option.split(":", 1)[0]
        if name in _FILTER_OPTIONS or (name in _CODEC_OPTIONS and value != "copy"):
            raise InternalError(f"a preview cut must not encode: {option} {value}", code="encoding")


def cut_args(
    source: str | os.PathLike[str], out: str | os.PathLike[str], start: float, end: float, *,
    video: bool,
) -> list[str]:  # fmt: skip
    """ffmpeg arguments that copy [start, end] of ``source`` into an MP4 (the copy starts at
    the keyframe at or before ``start``)."""
    streams = ["-map", "0:v:0?", "-map", "0:a:0?"] if video else ["-map", "0:a:0"]
    args = [
        *file_input(source, options=["-ss", f"{start:.3f}"]), "-t", f"{end - start:.3f}",
        *streams, "-c", "copy", "-avoid_negative_ts", "make_zero",
        "-movflags", "+faststart", "-f", "mp4", file_url(out),
    ]  # fmt: skip
    copy_only(args)
    return args


def encode_rendition(
    dubbed: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    grid: float,
    duration: float = 3600.0,
) -> Path:
    """The preview rendition of a dubbed video (its first video stream and its dub): small
    H.264 and AAC in MP4, a keyframe on every ``grid`` seconds and no B-frames (reordered
    frames would stretch a copy cut by a few frames past its end)."""
    args = [
        *file_input(dubbed), "-map", "0:V:0", "-map", "0:a:0",
        "-vf", "scale=-2:2*trunc(min(360\\,ih)/2),format=yuv420p",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "30", "-bf", "0",
        "-force_key_frames", f"expr:gte(t,n_forced*{grid:g})",
        "-c:a", "aac", "-b:a", "96k", "-map_metadata", "-1", "-map_chapters", "-1",
        "-movflags", "+faststart", "-f", "mp4", file_url(out),
    ]  # fmt: skip
    run_ffmpeg(args, timeout=60.0 + 1.0 * duration, blame="internal", what="preview rendition")
    return Path(out)
