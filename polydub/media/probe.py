"""Validate user media before anything else touches it: sniff, ffprobe, enforce ``Limits``.

The one check of user media, for both tiers: the API runs it on a spooled upload (in a thread)
and the worker's validate stage on the stored input, with ``Limits.from_settings`` of the same
Settings, so an upload the API accepts is one the worker accepts, and the same refusal codes.

Order matters: the file size is checked before anything reads it; the first bytes are sniffed
before ffprobe runs (a playlist, a concat list or an unknown format never reaches a demuxer); then
ffprobe runs with the file protocol only and the demuxer allow-list, demuxing every packet
(``-count_packets``, so truncated media shows up), and its answer must agree with the sniffed
family.

External references are never followed: QuickTime data references stay off (the mov demuxer's
``enable_drefs`` default), and every nested open inherits the file-only protocol whitelist; HLS,
DASH, concat and image-sequence demuxers are not on the demuxer allow-list at all.

Every refusal is an ``InvalidInput`` with a machine-readable code: ``empty_file``,
``media_too_large``, ``media_too_long``, ``no_audio_stream``, ``unsupported_media_type``,
``playlist_not_allowed``, ``corrupt_media``, ``too_many_streams``, ``resolution_too_large``
(and ``media_too_complex`` from the runner when ffprobe runs past its timeout). A stream of no
known kind (an AVI ``txts`` stream with a GAB2 chunk) is ``unsupported_media_type``; an audio
stream whose header states a sample rate outside ``SAMPLE_RATES`` (1 Hz, 2 GHz) is
``corrupt_media``: both used to pass here and fail only in the worker.

Where the API's and the worker's former probes differed, the stricter rule is the one kept; each
is marked "stricter" below.
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

from .runner import file_input, run_ffprobe
from .sniff import FAMILIES, sniff_file

# Sample rates a real recording has (telephone 8 kHz .. studio 768 kHz, with room below).
SAMPLE_RATES = range(4_000, 768_001)
# What ffprobe calls the kinds of stream it knows; anything else it could not identify.
STREAM_KINDS = frozenset({"video", "audio", "subtitle", "data", "attachment"})


def _default(name: str) -> Any:
    """A Settings field's default: Limits() is the default deployment's limits, stated once."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class Limits:
    """What user media may be. A deployment's come from ``from_settings`` (``POLYDUB_MEDIA_*``)."""

    max_bytes: int = _default("media_max_bytes")
    max_duration: float = _default("media_max_seconds")
    max_width: int = _default("media_max_width")
    max_height: int = _default("media_max_height")
    max_streams: int = _default("media_max_streams")
    probe_timeout: float = _default("media_probe_timeout_seconds")
    allowed_families: frozenset[str] = frozenset(FAMILIES)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_bytes=settings.media_max_bytes,
            max_duration=settings.media_max_seconds,
            max_width=settings.media_max_width,
            max_height=settings.media_max_height,
            max_streams=settings.media_max_streams,
            probe_timeout=settings.media_probe_timeout_seconds,
        )


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
class StreamRef:
    """Any stream of the file (subtitles and data included), as the job's media record lists it."""

    index: int
    codec_type: str
    codec_name: str


@dataclass(frozen=True)
class MediaInfo:
    family: str  # sniffed: mp4, mov, m4a, matroska, avi, wav, mp3, flac, ogg
    format_name: str  # ffprobe's demuxer name
    duration: float
    size_bytes: int
    bit_rate: int | None
    video: tuple[VideoStream, ...] = field(default=())
    audio: tuple[AudioStream, ...] = field(default=())
    streams: tuple[StreamRef, ...] = field(default=())

    @property
    def content_type(self) -> str:
        return FAMILIES[self.family].content_type

    @property
    def stream_count(self) -> int:
        return len(self.streams)

    @property
    def has_video(self) -> bool:
        return bool(self.video)

    @property
    def width(self) -> int | None:
        return max((v.width for v in self.video), default=None)

    @property
    def height(self) -> int | None:
        return max((v.height for v in self.video), default=None)

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
        """The job's media record (``jobs.media``), written by the API and again by the worker:
        every field, plus the summary the API's job answers read (``duration_seconds``...)."""
        return {
            **asdict(self),
            "container": self.family,
            "content_type": self.content_type,
            "duration_seconds": round(self.duration, 3),
            "has_video": self.has_video,
            "width": self.width,
            "height": self.height,
            "audio_streams": len(self.audio),
        }


def _reject(code: str, message: str, **detail: Any) -> InvalidInput:
    return InvalidInput(message, code=code, detail=detail or None)


def probe(path: str | os.PathLike[str], limits: Limits = Limits()) -> MediaInfo:
    """Sniff, ffprobe and check ``limits``; the result is what later stages rely on. Blocks for
    up to ``limits.probe_timeout``: call it through ``asyncio.to_thread`` from async code."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise _reject("unsupported_media_type", "not a regular file")
    size = info.st_size
    if size > limits.max_bytes:
        raise _reject("media_too_large", f"the file is {size} bytes; the limit is "
                      f"{limits.max_bytes}", size_bytes=size, max_bytes=limits.max_bytes)  # fmt: skip
    media_format = sniff_file(path)
    family = media_format.family
    if family not in limits.allowed_families:
        raise _reject("unsupported_media_type", f"{family} files are not accepted", family=family)
    # -count_packets (the API's; stricter): every packet is demuxed, so a truncated or garbled
    # file is found here and not halfway through a job.
    ran = run_ffprobe(
        [
            "-print_format", "json", "-show_format", "-show_streams", "-count_packets",
            "-probesize", "20000000", "-analyzeduration", "20000000",
            *file_input(Path(path)),
        ],
        timeout=limits.probe_timeout,
    )  # fmt: skip
    if ran.stderr.strip():
        # Stricter (the API's): any error ffprobe reports while demuxing refuses the file, even
        # when it exits 0 (e.g. headers that disagree with the bitstream).
        raise _reject("corrupt_media", "the media is corrupt or truncated",
                      reason=_first_line(ran.stderr))  # fmt: skip
    try:
        report = json.loads(ran.stdout)
    except json.JSONDecodeError as exc:
        raise _reject("corrupt_media", "ffprobe returned no readable report") from exc
    fmt = report.get("format") or {}
    format_name = str(fmt.get("format_name", ""))
    if format_name != media_format.demuxer:
        # Stricter (the worker's; the API only wanted any allowed demuxer): e.g. bytes that look
        # like MP4 but that ffprobe reads as something else.
        raise _reject("unsupported_media_type", f"the file claims {family} but reads as "
                      f"{format_name or 'nothing'}", family=family, format_name=format_name)  # fmt: skip
    streams: list[dict[str, Any]] = list(report.get("streams") or [])
    if len(streams) > limits.max_streams:
        raise _reject("too_many_streams", f"{len(streams)} streams; the limit is "
                      f"{limits.max_streams}", streams=len(streams))  # fmt: skip
    for s in streams:
        if s.get("codec_type") not in STREAM_KINDS:  # e.g. an AVI 'txts' stream (GAB2)
            raise _reject("unsupported_media_type", f"stream {s.get('index', '?')} is of no "
                          "known kind (an AVI GAB2 subtitle chunk?)", stream=s.get("index"))  # fmt: skip
    # Cover art is the attached_pic disposition (the worker's rule; the API left out mjpeg, png
    # and bmp by codec, which also let a Motion-JPEG video past the resolution limit).
    video = tuple(
        _video(s) for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    )  # fmt: skip
    audio_streams = [s for s in streams if s.get("codec_type") == "audio"]
    for v in video:
        if v.width > limits.max_width or v.height > limits.max_height:
            raise _reject("resolution_too_large", f"{v.width}x{v.height} exceeds "
                          f"{limits.max_width}x{limits.max_height}",
                          width=v.width, height=v.height)  # fmt: skip
        if v.width <= 0 or v.height <= 0:  # stricter (the worker's)
            raise _reject("corrupt_media", "a video stream has no size")
    if video and not media_format.video_allowed:  # stricter (the worker's)
        raise _reject("unsupported_media_type", f"{family} with video is not accepted")
    # The container's duration, else the longest stream's (the worker's: some live-recorded WebM
    # files state none). Not a loosening: the same duration limit applies to either.
    duration = _duration(fmt, streams)
    if duration is None or duration <= 0:
        raise _reject("corrupt_media", "the media has no known duration")
    if duration > limits.max_duration:
        raise _reject("media_too_long", f"the media lasts {duration:.1f} s; the limit is "
                      f"{limits.max_duration:.0f} s", duration=duration,
                      max_seconds=limits.max_duration)  # fmt: skip
    if not audio_streams:
        raise _reject("no_audio_stream", "the media has no audio stream to dub")
    if not any(_int(s.get("nb_read_packets")) for s in audio_streams):  # stricter (the API's)
        raise _reject("corrupt_media", "the audio stream holds no data")
    audio = tuple(_audio(s) for s in audio_streams)
    if any(a.sample_rate <= 0 or a.channels <= 0 for a in audio):  # stricter (the worker's)
        raise _reject("corrupt_media", "an audio stream has no sample rate or channels")
    for a in audio:
        if a.sample_rate not in SAMPLE_RATES:  # a crafted header: it decodes to no audio
            raise _reject("corrupt_media", f"an audio stream states a sample rate of "
                          f"{a.sample_rate} Hz (accepted: {SAMPLE_RATES.start}-"
                          f"{SAMPLE_RATES.stop - 1} Hz)", sample_rate=a.sample_rate)  # fmt: skip
    return MediaInfo(
        family=family,
        format_name=format_name,
        duration=duration,
        size_bytes=size,
        bit_rate=_int(fmt.get("bit_rate")),
        video=video,
        audio=audio,
        streams=tuple(
            StreamRef(
                int(s.get("index", 0)), str(s.get("codec_type", "")), str(s.get("codec_name", ""))
            )
            for s in streams
        ),
    )


def _first_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[0][:300] if lines else "unreadable media"


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
