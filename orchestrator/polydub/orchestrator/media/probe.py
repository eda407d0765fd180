"""Validate user media before any other stage touches it: sniff, ffprobe, enforce limits.

Order matters: the file size is checked before anything reads it; the first bytes are sniffed
before ffprobe runs (a playlist, a concat list or an unknown format never reaches a demuxer); then
ffprobe runs with the file protocol only and a demuxer allow-list, and its answer must agree with
the sniffed family.

External references are never followed: QuickTime data references stay off (the mov demuxer's
``enable_drefs`` default), and every nested open inherits the file-only protocol whitelist; HLS,
DASH, concat and image-sequence demuxers are not on the demuxer allow-list at all.

Every refusal is an ``InvalidInput`` with a machine-readable code: ``media_too_large``,
``media_too_long``, ``no_audio_stream``, ``unsupported_media_type``,
``playlist_not_allowed``, ``corrupt_media``, ``too_many_streams``, ``resolution_too_large``
(and ``media_too_complex`` from the runner when ffprobe runs past its timeout).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from polydub.errors import InvalidInput
from polydub.settings import Settings

from .ffmpeg import file_input, run_ffprobe

# Sniffed family -> the ffprobe demuxer name it must be read with.
_DEMUXER = {
    "mp4": "mov,mp4,m4a,3gp,3g2,mj2",
    "mov": "mov,mp4,m4a,3gp,3g2,mj2",
    "m4a": "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska": "matroska,webm",
    "avi": "avi",
    "wav": "wav",
    "mp3": "mp3",
    "flac": "flac",
    "ogg": "ogg",
}
AUDIO_ONLY_FAMILIES = frozenset({"wav", "mp3", "flac", "ogg", "m4a"})

# QuickTime files need not start with ftyp; these top-level atoms also open a valid movie.
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot", b"uuid"}
# Text that makes a demuxer fetch other resources: HLS / extended M3U, ffconcat, DASH, SDP, SMIL.
_PLAYLIST_PREFIXES = (b"#EXTM3U", b"ffconcat", b"<?xml", b"<MPD", b"<smil", b"[playlist]", b"v=0")
_SNIFF_BYTES = 4096


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 200 * 1024 * 1024
    max_duration: float = 60 * 60.0
    # The defaults equal Settings' (media_max_*); a deployment's come from Limits.from_settings.
    max_width: int = 7680
    max_height: int = 4320
    max_streams: int = 16
    allowed_families: frozenset[str] = frozenset(_DEMUXER)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The deployment's limits, the same ones the API applies to uploads."""
        return cls(
            max_bytes=settings.media_max_bytes,
            max_duration=settings.media_max_seconds,
            max_width=settings.media_max_width,
            max_height=settings.media_max_height,
            max_streams=settings.media_max_streams,
        )

    probe_timeout: float = 30.0


@dataclass(frozen=True)
class VideoStream:
    index: int
    codec: str
    width: int
    height: int
    fps: float
    duration: float | None
    start_time: float | None = None


@dataclass(frozen=True)
class AudioStream:
    index: int
    codec: str
    sample_rate: int
    channels: int
    duration: float | None
    language: str | None = None
    start_time: float | None = None


@dataclass(frozen=True)
class MediaInfo:
    family: str  # sniffed: mp4, mov, m4a, matroska, avi, wav, mp3, flac, ogg
    format_name: str  # ffprobe's demuxer name
    duration: float
    size_bytes: int
    bit_rate: int | None
    video: tuple[VideoStream, ...] = field(default=())
    audio: tuple[AudioStream, ...] = field(default=())
    stream_count: int = 0

    @property
    def has_video(self) -> bool:
        return bool(self.video)

    @property
    def audio_duration(self) -> float:
        """The first audio stream's duration where the container states it, else the file's."""
        first = self.audio[0].duration if self.audio else None
        return first if first is not None else self.duration

    @property
    def audio_offset(self) -> float:
        """The first audio stream's start relative to the first video stream's (for ``mux``)."""
        if not self.audio or not self.video:
            return 0.0
        return (self.audio[0].start_time or 0.0) - (self.video[0].start_time or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reject(code: str, message: str, **detail: Any) -> InvalidInput:
    return InvalidInput(message, code=code, detail=detail or None)


def sniff(path: str | os.PathLike[str]) -> str:
    """The container family from the first bytes; raise for playlists and unknown formats."""
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if len(head) < 12:
        raise _reject("corrupt_media", "the file is too short to be media")
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B "):
            return "m4a"
        return "mov" if brand == b"qt  " else "mp4"
    if box in _QT_ATOMS:
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or _mpeg_audio_frame(head):
        return "mp3"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    lowered = text[:16].lower()
    if any(lowered.startswith(p.lower()) for p in _PLAYLIST_PREFIXES) or _looks_like_concat(text):
        raise _reject("playlist_not_allowed", "playlists and concat lists are not accepted")
    raise _reject("unsupported_media_type", "unsupported or unknown media format")


def _mpeg_audio_frame(head: bytes) -> bool:
    # 11 sync bits, then a version other than "reserved" and layer III (ADTS AAC has layer 00).
    b0, b1 = head[0], head[1]
    return b0 == 0xFF and (b1 & 0xE0) == 0xE0 and (b1 >> 3) & 3 != 1 and (b1 >> 1) & 3 == 1


def _looks_like_concat(text: bytes) -> bool:
    first = text.split(b"\n", 1)[0].strip().lower()
    return first.startswith((b"file ", b"file\t", b"#extinf"))


def probe(path: str | os.PathLike[str], limits: Limits = Limits()) -> MediaInfo:
    """Sniff, ffprobe and check ``limits``; the result is what later stages rely on."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise _reject("unsupported_media_type", "not a regular file")
    size = info.st_size
    if size > limits.max_bytes:
        raise _reject("media_too_large", f"the file is {size} bytes; the limit is "
                      f"{limits.max_bytes}", size_bytes=size, max_bytes=limits.max_bytes)  # fmt: skip
    family = sniff(path)
    if family not in limits.allowed_families:
        raise _reject("unsupported_media_type", f"{family} files are not accepted", family=family)
    out = run_ffprobe(
        [
            "-print_format", "json", "-show_format", "-show_streams",
            "-probesize", "20000000", "-analyzeduration", "20000000",
            *file_input(Path(path)),
        ],
        timeout=limits.probe_timeout,
    ).stdout  # fmt: skip
    try:
        report = json.loads(out)
    except json.JSONDecodeError as exc:
        raise _reject("corrupt_media", "ffprobe returned no readable report") from exc
    fmt = report.get("format") or {}
    format_name = str(fmt.get("format_name", ""))
    if format_name != _DEMUXER[family]:
        # e.g. bytes that look like MP4 but that ffprobe reads as something else
        raise _reject("unsupported_media_type", f"the file claims {family} but reads as "
                      f"{format_name or 'nothing'}", family=family, format_name=format_name)  # fmt: skip
    streams: list[dict[str, Any]] = list(report.get("streams") or [])
    if len(streams) > limits.max_streams:
        raise _reject("too_many_streams", f"{len(streams)} streams; the limit is "
                      f"{limits.max_streams}", streams=len(streams))  # fmt: skip
    video = tuple(
        _video(s) for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    )  # fmt: skip
    audio = tuple(_audio(s) for s in streams if s.get("codec_type") == "audio")
    for v in video:
        if v.width > limits.max_width or v.height > limits.max_height:
            raise _reject("resolution_too_large", f"{v.width}x{v.height} exceeds "
                          f"{limits.max_width}x{limits.max_height}",
                          width=v.width, height=v.height)  # fmt: skip
        if v.width <= 0 or v.height <= 0:
            raise _reject("corrupt_media", "a video stream has no size")
    if family in AUDIO_ONLY_FAMILIES and video and family != "m4a":
        raise _reject("unsupported_media_type", f"{family} with video is not accepted")
    duration = _duration(fmt, streams)
    if duration is None or duration <= 0:
        raise _reject("corrupt_media", "the media has no known duration")
    if duration > limits.max_duration:
        raise _reject("media_too_long", f"the media lasts {duration:.1f} s; the limit is "
                      f"{limits.max_duration:.0f} s", duration=duration)  # fmt: skip
    if not audio:
        raise _reject("no_audio_stream", "the media has no audio stream")
    if any(a.sample_rate <= 0 or a.channels <= 0 for a in audio):
        raise _reject("corrupt_media", "an audio stream has no sample rate or channels")
    bit_rate = _int(fmt.get("bit_rate"))
    return MediaInfo(
        family=family,
        format_name=format_name,
        duration=duration,
        size_bytes=size,
        bit_rate=bit_rate,
        video=video,
        audio=audio,
        stream_count=len(streams),
    )


def _duration(fmt: dict[str, Any], streams: list[dict[str, Any]]) -> float | None:
    value = _float(fmt.get("duration"))
    if value is not None:
        return value
    # Some live-recorded WebM files state no container duration; use the longest stream.
    known = [d for d in (_float(s.get("duration")) for s in streams) if d is not None]
    return max(known) if known else None


def _video(s: dict[str, Any]) -> VideoStream:
    return VideoStream(
        index=int(s.get("index", 0)),
        codec=str(s.get("codec_name", "unknown")),
        width=int(s.get("width") or 0),
        height=int(s.get("height") or 0),
        fps=_rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate")) or 0.0,
        duration=_float(s.get("duration")),
        start_time=_float(s.get("start_time")),
    )


def _audio(s: dict[str, Any]) -> AudioStream:
    tags = s.get("tags") or {}
    return AudioStream(
        index=int(s.get("index", 0)),
        codec=str(s.get("codec_name", "unknown")),
        sample_rate=int(_float(s.get("sample_rate")) or 0),
        channels=int(s.get("channels") or 0),
        duration=_float(s.get("duration")),
        language=tags.get("language"),
        start_time=_float(s.get("start_time")),
    )


def _float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if result == result and result not in (float("inf"), float("-inf")) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def _rate(value: Any) -> float | None:
    try:
        rate = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    return round(float(rate), 3) if rate > 0 else None
