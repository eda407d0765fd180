"""Put the dubbed audio into the original video without touching the video.

The video streams are copied (``-c:v copy``; never re-encoded), the dub is encoded to AAC, and
nothing trims either side (no ``-shortest``): the output's audio lasts what the mix WAV lasts,
which is the original audio's length. The worker encodes the dub once (``encode_audio``, the M4A
deliverable) and muxes that AAC by copy (``copy_audio``): one encode per language, not two. MP4 when the video codec is allowed in MP4, else Matroska
(e.g. VP8 or Theora), so the copy always succeeds.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .runner import file_input, file_url, run_ffmpeg

Container = Literal["mp4", "matroska"]

# Video codecs the MP4 muxer takes as a stream copy.
MP4_VIDEO_CODECS = frozenset(
    {"h264", "hevc", "av1", "vp9", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg", "png"}
)


@dataclass(frozen=True)
class MuxResult:
    path: Path
    container: Container
    seconds: float  # wall time of the ffmpeg run


def container_for(video_codecs: list[str]) -> Container:
    return "mp4" if all(c in MP4_VIDEO_CODECS for c in video_codecs) else "matroska"


def mux(
    video_path: str | os.PathLike[str],
    audio: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    video_codecs: list[str],
    language: str | None = None,
    audio_offset: float = 0.0,
    audio_bitrate: str = "192k",
    copy_audio: bool = False,
    duration: float = 3600.0,
) -> MuxResult:
    """Copy every video stream of ``video_path`` (not cover art) and add ``audio``: a WAV encoded
    to AAC, or with ``copy_audio`` an AAC file (``encode_audio``'s M4A) copied as it is.

    ``video_codecs`` comes from ``MediaInfo.video`` and picks the container; ``language`` (ISO
    639-2/3) tags the audio; ``audio_offset`` is the original audio's start relative to the video
    (``AudioStream.start_time`` minus the video's), so the dub lines up as the original did.
    """
    container = container_for(video_codecs)
    audio_options = ["-itsoffset", f"{audio_offset:.6f}"] if audio_offset else []
    codec = ["-c:a", "copy"] if copy_audio else ["-c:a", "aac", "-b:a", audio_bitrate]
    args = [
        *file_input(video_path),
        *file_input(audio, user_media=False, options=audio_options),
        "-map", "0:V", "-map", "1:a:0",
        "-c:v", "copy", *codec,
        "-map_metadata", "0", "-map_chapters", "-1",
        "-disposition:a:0", "default",
    ]  # fmt: skip
    if "hevc" in video_codecs and container == "mp4":
        args += ["-tag:v", "hvc1"]  # the tag players (Apple's) expect for HEVC in MP4
    if language:
        args += ["-metadata:s:a:0", f"language={language}"]
    if container == "mp4":
        args += ["-movflags", "+faststart", "-f", "mp4"]
    else:
        args += ["-f", "matroska"]
    args.append(file_url(out_path))
    run = run_ffmpeg(args, timeout=60.0 + 0.5 * duration, blame="input", what="mux")
    return MuxResult(Path(out_path), container, run.seconds)


def encode_audio(
    audio_wav: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    bitrate: str = "192k",
    language: str | None = None,
    duration: float = 3600.0,
) -> Path:
    """The dubbed audio alone as AAC in an M4A file (a deliverable, and the output for audio-only
    input)."""
    args = [*file_input(audio_wav, user_media=False), "-map", "0:a:0", "-c:a", "aac",
            "-b:a", bitrate, "-map_metadata", "-1"]  # fmt: skip
    if language:
        args += ["-metadata:s:a:0", f"language={language}"]
    args += ["-movflags", "+faststart", "-f", "ipod", file_url(out_path)]
    run_ffmpeg(args, timeout=60.0 + 0.5 * duration, blame="internal", what="encode audio")
    return Path(out_path)


def stream_md5(
    path: str | os.PathLike[str], selector: str = "0:V", *, duration: float = 3600.0
) -> str:
    """MD5 of the packets of the selected streams, copied (not decoded): equal for a video stream
    before and after ``mux`` when the copy is bit-identical."""
    run = run_ffmpeg(
        [*file_input(path), "-map", selector, "-c", "copy", "-f", "md5", "pipe:1"],
        timeout=60.0 + 0.2 * duration,
        blame="internal",
        what="stream checksum",
    )  # fmt: skip
    text = run.stdout.decode().strip()
    return text.split("=", 1)[1] if text.startswith("MD5=") else hashlib.md5(run.stdout).hexdigest()
