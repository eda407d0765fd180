"""Is an upload media we accept? Magic bytes first, then ffprobe, never the file name.

``sniff`` looks at the first bytes (as soon as they arrive, before the rest is read) and accepts
only the containers on an allow-list; text playlists and concat lists get their own code.
``probe`` runs ffprobe on the spooled file with the ``file`` protocol only, a demuxer
allow-list (so HLS, DASH, concat and friends cannot be selected even by content) and a
wall-clock timeout after which it is killed (a crafted file cannot keep it spinning). It demuxes every packet (``-count_packets``) so truncated media shows up as an
error, then checks for an audio stream and the limits on duration, resolution and streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polydub.api.errors import UnsupportedMediaType
from polydub.errors import InvalidInput
from polydub.settings import Settings

SNIFF_BYTES = 64

# Demuxers ffprobe may use; each entry is one name of a demuxer (``mov`` covers mp4/m4a/3gp).
DEMUXERS = ("mov", "mp4", "m4a", "matroska", "webm", "avi", "wav", "mp3", "flac", "ogg")

_TEXT_PLAYLISTS = (
    b"#EXTM3U",
    b"#EXT-X-",
    b"ffconcat",
    b"[playlist]",
    b"<?xml",
    b"<MPD",
    b"<smil",
    b"<asx",
    b"file '",
    b"file ",
)


@dataclass(frozen=True)
class Container:
    name: str
    content_type: str


def sniff(head: bytes) -> Container:
    """Classify the first bytes of an upload; raise 415 for anything not on the allow-list."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    lowered = stripped[:16].lower()
    if any(lowered.startswith(p.lower()) for p in _TEXT_PLAYLISTS):
        raise UnsupportedMediaType(
            "playlists, concat lists and manifests are not accepted; upload the media itself",
            code="playlist_not_allowed",
        )
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return Container("mov", "video/quicktime")
        if brand in {b"M4A ", b"M4B "}:
            return Container("m4a", "audio/mp4")
        return Container("mp4", "video/mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Container("matroska", "video/x-matroska")
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return Container("avi", "video/x-msvideo")
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return Container("wav", "audio/wav")
    if head.startswith(b"fLaC"):
        return Container("flac", "audio/flac")
    if head.startswith(b"OggS"):
        return Container("ogg", "audio/ogg")
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return Container("mp3", "audio/mpeg")
    raise UnsupportedMediaType(
        "the file is not a supported video or audio container "
        "(mp4, mov, mkv, webm, avi, wav, mp3, flac, ogg)",
        code="unsupported_media_type",
    )


@dataclass(frozen=True)
class MediaInfo:
    container: str
    content_type: str
    duration_seconds: float
    has_video: bool
    width: int | None
    height: int | None
    audio_streams: int
    streams: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "content_type": self.content_type,
            "duration_seconds": self.duration_seconds,
            "has_video": self.has_video,
            "width": self.width,
            "height": self.height,
            "audio_streams": self.audio_streams,
            "streams": self.streams,
        }


async def run_ffprobe(path: Path, limit_seconds: float) -> tuple[int, bytes, bytes]:
    argv = [
        "ffprobe",
        "-hide_banner",
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        ",".join(DEMUXERS),
        "-count_packets",
        "-show_entries",
        "format=format_name,duration:stream=index,codec_type,codec_name,width,height,"
        "duration,channels,sample_rate,nb_read_packets",
        "-of",
        "json",
        f"file:{path}",
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise InvalidInput(
            "the media could not be analysed in time", code="corrupt_media"
        ) from None
    return proc.returncode or 0, out, err


def _first_error(err: bytes, path: Path) -> str:
    text = err.decode(errors="replace").replace(f"file:{path}", "input").replace(str(path), "input")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else "unreadable media"


async def probe(path: Path, container: Container, settings: Settings) -> MediaInfo:
    code, out, err = await run_ffprobe(path, settings.api_probe_timeout_seconds)
    if code != 0 or err.strip():
        raise InvalidInput(
            "the media is corrupt or truncated",
            code="corrupt_media",
            detail={"reason": _first_error(err, path)},
        )
    try:
        report = json.loads(out)
        fmt = report["format"]
        streams: list[dict[str, Any]] = report.get("streams", [])
    except (ValueError, KeyError) as exc:
        raise InvalidInput("the media could not be analysed", code="corrupt_media") from exc

    demuxer_names = set(str(fmt.get("format_name", "")).split(","))
    if not demuxer_names & set(DEMUXERS):
        raise UnsupportedMediaType("the container is not supported", code="unsupported_media_type")
    if len(streams) > settings.media_max_streams:
        raise InvalidInput(
            f"the media has {len(streams)} streams; at most {settings.media_max_streams} allowed",
            code="too_many_streams",
        )
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    video = [
        s
        for s in streams
        if s.get("codec_type") == "video" and s.get("codec_name") not in {"mjpeg", "png", "bmp"}
    ]
    if not audio:
        raise InvalidInput("the media has no audio stream to dub", code="no_audio_stream")
    if not any(int(s.get("nb_read_packets") or 0) > 0 for s in audio):
        raise InvalidInput("the audio stream holds no data", code="corrupt_media")
    try:
        duration = float(fmt.get("duration") or 0.0)
    except ValueError:
        duration = 0.0
    if duration <= 0:
        raise InvalidInput("the media has no duration", code="corrupt_media")
    if duration > settings.media_max_seconds:
        raise InvalidInput(
            f"the media lasts {duration:.0f} s; at most {settings.media_max_seconds:.0f} s",
            code="media_too_long",
            detail={"duration_seconds": duration, "max_seconds": settings.media_max_seconds},
        )
    width = max((int(s.get("width") or 0) for s in video), default=0) or None
    height = max((int(s.get("height") or 0) for s in video), default=0) or None
    if (width or 0) > settings.media_max_width or (height or 0) > settings.media_max_height:
        raise InvalidInput(
            f"the video is {width}x{height}; at most "
            f"{settings.media_max_width}x{settings.media_max_height}",
            code="resolution_too_large",
        )
    return MediaInfo(
        container=container.name,
        content_type=container.content_type,
        duration_seconds=round(duration, 3),
        has_video=bool(video),
        width=width,
        height=height,
        audio_streams=len(audio),
        streams=[
            {k: s[k] for k in ("index", "codec_type", "codec_name") if k in s} for s in streams
        ],
    )
