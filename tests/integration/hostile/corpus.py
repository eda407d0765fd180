"""The hostile-input corpus, generated on the fly: each case is bytes, a file name, and what the
API (``POST /jobs``) and the worker's validate stage must answer. Both run the one
``polydub.media.probe``, so a refusal has one code (``api.code == worker``).

Nothing here is downloaded: crafted files are written byte by byte (RIFF/AVI chunks, MP4 boxes
patched in place), the rest comes from ffmpeg's test sources. Local-file references point at
``/etc/passwd`` and at a canary file that ``Canary`` watches with inotify, so a test can assert that
no demuxer ever opened it (an open is reported by the kernel, whoever the process is).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# --- the canary


_IN_ACCESS = 0x001
_IN_OPEN = 0x020
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class Canary:
    """A file that no code path may open, watched through inotify (open and read events).

    Its name ends in ``.ts``, an extension the HLS demuxer accepts for segments, and it holds a
    marker string that must never appear in an answer, an error message or a stored object.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.marker = f"POLYDUB-CANARY-{uuid.uuid4().hex}"
        self.path = folder / "canary-secret.ts"
        self.path.write_text(self.marker + "\n")
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(self.path), _IN_OPEN | _IN_ACCESS)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.events: list[int] = []

    def touched(self) -> list[int]:
        """Every open/read event since the watch began (masks); empty means never opened."""
        while True:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            except OSError as exc:  # pragma: no cover - EINTR and friends
                if exc.errno == errno.EAGAIN:
                    break
                raise
            offset = 0
            while offset + 16 <= len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                self.events.append(mask)
                offset += 16 + length
        return list(self.events)

    def close(self) -> None:
        os.close(self._fd)


# --- small real media from ffmpeg


def ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", *args],
        check=True,
        capture_output=True,
        timeout=120,
    )


_VIDEO = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10"]
_AUDIO = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"]
_H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-c:a", "aac"]


@dataclass(frozen=True)
class BaseMedia:
    mp4: bytes  # 2 s, moov after mdat (ffmpeg's default)
    faststart: bytes  # 2 s, moov first
    wav: bytes  # 1 s, 16 kHz mono s16
    mkv_streams: dict[int, bytes]  # audio-stream count -> mkv with that many audio streams


def base_media(folder: Path) -> BaseMedia:
    folder.mkdir(parents=True, exist_ok=True)
    mp4, fast, wav = folder / "base.mp4", folder / "fast.mp4", folder / "base.wav"
    ffmpeg(*_VIDEO, *_AUDIO, "-t", "2", *_H264, str(mp4))
    ffmpeg(*_VIDEO, *_AUDIO, "-t", "2", *_H264, "-movflags", "+faststart", str(fast))
    ffmpeg(*_AUDIO, "-t", "1", "-c:a", "pcm_s16le", str(wav))
    streams = {}
    for count in (12, 40):
        out = folder / f"streams{count}.mkv"
        maps = [arg for _ in range(count) for arg in ("-map", "0:a")]
        ffmpeg(*_AUDIO, "-t", "1", *maps, "-c:a", "pcm_s16le", str(out))
        streams[count] = out.read_bytes()
    return BaseMedia(mp4.read_bytes(), fast.read_bytes(), wav.read_bytes(), streams)


# --- MP4 boxes


def boxes(
    data: bytes | bytearray, start: int = 0, end: int | None = None
) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the boxes in data[start:end] (32-bit sizes; enough here)."""
    end = len(data) if end is None else end
    found = []
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size < 8:
            break
        found.append((kind, offset, size))
        offset += size
    return found


def find_box(data: bytes | bytearray, path: list[bytes]) -> tuple[int, int]:
    """Offset and size of the first box along ``path`` (e.g. [moov, trak, mdia, mdhd])."""
    start, end = 0, len(data)
    offset = size = -1
    containers = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"udta", b"edts"}
    for depth, kind in enumerate(path):
        for found, off, sz in boxes(data, start, end):
            if found == kind:
                offset, size = off, sz
                break
        else:
            raise KeyError(b"/".join(path[: depth + 1]))
        header = 8
        if kind == b"stsd":
            header = 16  # version/flags + entry count
        if kind in containers or kind == b"stsd":
            start, end = offset + header, offset + size
    return offset, size


def patch_durations(mp4: bytes, seconds: float) -> bytes:
    """Declare ``seconds`` in mvhd, every tkhd and every mdhd (the samples stay 2 s)."""
    data = bytearray(mp4)
    moov, moov_size = find_box(data, [b"moov"])
    mvhd, _ = find_box(data, [b"moov", b"mvhd"])
    movie_scale = struct.unpack_from(">I", data, mvhd + 20)[0]
    struct.pack_into(">I", data, mvhd + 24, min(int(seconds * movie_scale), 0xFFFFFFFF))
    for kind, trak, trak_size in boxes(data, moov + 8, moov + moov_size):
        if kind != b"trak":
            continue
        sub = bytes(data[trak : trak + trak_size])
        tkhd, _ = find_box(sub, [b"trak", b"tkhd"])
        struct.pack_into(">I", data, trak + tkhd + 28, min(int(seconds * movie_scale), 0xFFFFFFFF))
        mdhd, _ = find_box(sub, [b"trak", b"mdia", b"mdhd"])
        scale = struct.unpack_from(">I", data, trak + mdhd + 20)[0]
        struct.pack_into(">I", data, trak + mdhd + 24, min(int(seconds * scale), 0xFFFFFFFF))
    return bytes(data)


def patch_dimensions(mp4: bytes, width: int, height: int) -> bytes:
    """Declare width x height in the video track's tkhd and avc1 sample entry (not in the SPS)."""
    data = bytearray(mp4)
    moov, moov_size = find_box(data, [b"moov"])
    for kind, trak, trak_size in boxes(data, moov + 8, moov + moov_size):
        if kind != b"trak":
            continue
        sub = bytes(data[trak : trak + trak_size])
        try:
            avc1, _ = find_box(sub, [b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"avc1"])
        except KeyError:
            continue
        tkhd, _ = find_box(sub, [b"trak", b"tkhd"])
        struct.pack_into(">II", data, trak + tkhd + 84, width << 16, height << 16)
        struct.pack_into(">HH", data, trak + avc1 + 32, width, height)
    return bytes(data)


def corrupt_box(mp4: bytes, path: list[bytes], seed: int = 7) -> bytes:
    """Overwrite a box's payload (after its header) with deterministic garbage."""
    data = bytearray(mp4)
    offset, size = find_box(data, path)
    garbage = (uuid.UUID(int=seed).bytes * (size // 16 + 1))[: size - 8]
    data[offset + 8 : offset + size] = bytes(b ^ 0xA5 for b in garbage)
    return bytes(data)


# --- RIFF / AVI


def chunk(fourcc: bytes, payload: bytes) -> bytes:
    pad = b"\0" if len(payload) % 2 else b""
    return fourcc + struct.pack("<I", len(payload)) + payload + pad


def riff_list(kind: bytes, *chunks: bytes) -> bytes:
    return chunk(b"LIST", kind + b"".join(chunks))


def _strh(
    kind: bytes, handler: bytes, scale: int, rate: int, length: int, sample_size: int
) -> bytes:
    return struct.pack(
        "<4s4sIHHIIIIIIIIhhhh", kind, handler, 0, 0, 0, 0, scale, rate, 0, length, 0, 0,
        sample_size, 0, 0, 0, 0,
    )  # fmt: skip


def avi(
    *,
    width: int = 64,
    height: int = 48,
    fourcc: bytes = b"XVXV",  # no decoder knows it: ffprobe keeps the declared size
    frames: int = 20,
    declared_frames: int | None = None,
    subtitle: bytes | None = None,
) -> bytes:
    """A small AVI: an undecodable video stream of ``width`` x ``height``, 16 kHz PCM audio (2 s),
    and optionally a 'txts' subtitle stream whose one packet is ``subtitle`` (e.g. GAB2)."""
    us_per_frame = 100_000  # 10 fps
    total = declared_frames if declared_frames is not None else frames
    streams = 3 if subtitle is not None else 2
    avih = struct.pack("<IIIIIIIIII16x", us_per_frame, 0, 0, 0, total, 0, streams, 0, width, height)
    bih = struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, fourcc, 0, 0, 0, 0, 0)
    wfx = struct.pack("<HHIIHHH", 1, 1, 16000, 32000, 2, 16, 0)
    strls = [
        riff_list(
            b"strl",
            chunk(b"strh", _strh(b"vids", fourcc, 1, 10, total, 0)),
            chunk(b"strf", bih),
        ),
        riff_list(
            b"strl",
            chunk(b"strh", _strh(b"auds", b"\0\0\0\0", 1, 16000, min(total * 1600, 0xFFFFFFFF), 2)),
            chunk(b"strf", wfx),
        ),
    ]
    if subtitle is not None:
        strls.append(riff_list(b"strl", chunk(b"strh", _strh(b"txts", b"\0\0\0\0", 1, 10, 1, 0))))
    packets = []
    for i in range(frames):
        packets.append(chunk(b"00dc", bytes([i % 251]) * 64))
        packets.append(chunk(b"01wb", b"\x10\x00" * 1600))
    if subtitle is not None:
        packets.insert(0, chunk(b"02tx", subtitle))
    body = riff_list(b"hdrl", chunk(b"avih", avih), *strls) + riff_list(b"movi", *packets)
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"AVI " + body


def gab2(payload: bytes, name: str = "sub") -> bytes:
    """A GAB2 subtitle packet (what avidec hands to a nested demuxer) carrying ``payload``."""
    encoded = (name + "\0").encode("utf-16-le")
    return (
        b"GAB2\0"
        + struct.pack("<H", 2)
        + struct.pack("<I", len(encoded))
        + encoded
        + struct.pack("<H", 4)
        + struct.pack("<I", len(payload))
        + payload
    )


def wav_with_declared_size(wav: bytes, data_bytes: int) -> bytes:
    """A WAV whose RIFF and data chunk sizes claim ``data_bytes`` (the samples stay 1 s)."""
    data = bytearray(wav)
    offset = data.index(b"data")
    struct.pack_into("<I", data, offset + 4, data_bytes)
    struct.pack_into("<I", data, 4, min(data_bytes + offset, 0xFFFFFFFF))
    return bytes(data)


def wav_with_sample_rate(wav: bytes, rate: int, *, data_bytes: int | None = None) -> bytes:
    """A WAV whose header states ``rate`` Hz (and the byte rate to match), optionally cut to
    ``data_bytes`` of samples (so 1 Hz stays within the duration limit)."""
    data = bytearray(wav)
    fmt = data.index(b"fmt ")
    struct.pack_into("<I", data, fmt + 12, rate)
    struct.pack_into("<I", data, fmt + 16, min(rate * 2, 0xFFFFFFFF))
    if data_bytes is not None:
        offset = data.index(b"data")
        struct.pack_into("<I", data, offset + 4, data_bytes)
        del data[offset + 8 + data_bytes :]
        struct.pack_into("<I", data, 4, len(data) - 8)
    return bytes(data)


# --- the cases


@dataclass(frozen=True)
class Expect:
    status: int  # 202: accepted by the API
    code: str | None = None


ACCEPTED = Expect(202)


@dataclass(frozen=True)
class Material:
    """What the cases are made from: real media and the canary they point at."""

    base: BaseMedia
    canary: Canary

    @property
    def hls(self) -> bytes:
        return (
            "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n"
            f"file://{self.canary.path}\n#EXT-X-ENDLIST\n"
        ).encode()

    @property
    def ffconcat(self) -> bytes:
        return f"ffconcat version 1.0\nfile '{self.canary.path}'\n".encode()


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Material], bytes]
    filename: bytes
    api: Expect  # what POST /jobs answers (multipart and presigned alike)
    worker: str | None  # the validate stage's refusal code; None when it accepts the file
    note: str = ""


def _cut_in_moov(m: Material) -> bytes:
    moov, _ = find_box(m.base.faststart, [b"moov"])
    return m.base.faststart[: moov + 200]


def _cut_before_moov(m: Material) -> bytes:
    mdat, _ = find_box(m.base.mp4, [b"mdat"])
    return m.base.mp4[: mdat + 4000]


STBL = [b"moov", b"trak", b"mdia", b"minf", b"stbl"]

CASES: list[Case] = [
    # Truncated and corrupt MP4s (a half-truncated faststart MP4 is in test_bad_input.py)
    Case("mp4 cut inside ftyp", lambda m: m.base.faststart[:20], b"a.mp4",
         Expect(422, "corrupt_media"), "corrupt_media"),
    Case("mp4 cut inside moov", _cut_in_moov, b"a.mp4", Expect(422, "no_audio_stream"),
         "no_audio_stream", "the cut leaves the video track whole and the audio track out"),
    Case("mp4 without its moov (cut before it)", _cut_before_moov, b"a.mp4",
         Expect(422, "corrupt_media"), "corrupt_media"),
    Case("mp4 with a garbage moov", lambda m: corrupt_box(m.base.faststart, [b"moov"]), b"a.mp4",
         Expect(422, "corrupt_media"), "corrupt_media",
         "no known duration (the API's own probe used to say no_audio_stream)"),
    Case("mp4 with a garbage stbl (first track)", lambda m: corrupt_box(m.base.mp4, STBL),
         b"a.mp4", Expect(422, "corrupt_media"), "corrupt_media",
         "a video stream without a size (the API's own probe used to accept it)"),
    # Zero length and wrong extensions
    Case("zero-length file", lambda m: b"", b"empty.mp4", Expect(422, "empty_file"),
         "empty_file"),
    Case("shell script named .mp4", lambda m: b"#!/bin/sh\ncat /etc/passwd\n" * 4, b"run.mp4",
         Expect(415, "unsupported_media_type"), "unsupported_media_type"),
    Case("HTML named .mkv",
         lambda m: b"<html><body><img src='file:///etc/passwd'></body></html>", b"page.mkv",
         Expect(415, "unsupported_media_type"), "unsupported_media_type"),
    Case("WAV named .mp4 (content decides)", lambda m: m.base.wav, b"song.mp4", ACCEPTED, None,
         "accepted as the WAV it is: the name is metadata only"),
    Case("MP4 named .exe (content decides)", lambda m: m.base.faststart, b"setup.exe", ACCEPTED,
         None, "accepted as the MP4 it is: the name is metadata only"),
    # Playlists and concat lists pointing at local files
    Case("HLS playlist -> /etc/passwd",
         lambda m: b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n", b"a.mp4",
         Expect(415, "playlist_not_allowed"), "playlist_not_allowed"),
    Case("HLS playlist -> canary (.ts segment)", lambda m: m.hls, b"a.m3u8",
         Expect(415, "playlist_not_allowed"), "playlist_not_allowed"),
    Case("HLS playlist with BOM and blank lines", lambda m: b"\xef\xbb\xbf\r\n\r\n" + m.hls,
         b"a.mp4", Expect(415, "playlist_not_allowed"), "playlist_not_allowed"),
    Case("HLS playlist, relative path",
         lambda m: b"#EXTM3U\n#EXTINF:1,\n../../../../../../etc/passwd\n", b"a.mp4",
         Expect(415, "playlist_not_allowed"), "playlist_not_allowed"),
    Case("ffconcat list -> canary", lambda m: m.ffconcat, b"a.mp4",
         Expect(415, "playlist_not_allowed"), "playlist_not_allowed"),
    Case("concat list without header -> /etc/passwd",
         lambda m: b"file '/etc/passwd'\nfile '/etc/passwd'\n", b"list.txt",
         Expect(415, "playlist_not_allowed"), "playlist_not_allowed"),
    Case("concat list behind a comment", lambda m: b"# list\n" + m.ffconcat[21:], b"a.mp4",
         Expect(415, "unsupported_media_type"), "unsupported_media_type"),
    Case("AVI with a GAB2 subtitle holding an HLS playlist -> canary",
         lambda m: avi(subtitle=gab2(m.hls)), b"a.avi",
         Expect(415, "unsupported_media_type"), "unsupported_media_type",
         "the GAB2 stream is of no kind ffprobe knows: refused by the probe (issue #13; the "
         "nested demuxer was never opened either)"),
    Case("AVI with a GAB2 subtitle holding a concat list -> canary",
         lambda m: avi(subtitle=gab2(m.ffconcat)), b"a.avi",
         Expect(415, "unsupported_media_type"), "unsupported_media_type", "as above"),
    # Huge declared dimensions or duration (crafted headers)
    Case("AVI declaring 30000x20000 video", lambda m: avi(width=30000, height=20000), b"a.avi",
         Expect(422, "resolution_too_large"), "resolution_too_large"),
    Case("AVI declaring 5000x2000 video", lambda m: avi(width=5000, height=2000), b"a.avi",
         ACCEPTED, None, "within the one limit of the one probe (7680x4320)"),
    Case("AVI declaring 100 hours", lambda m: avi(declared_frames=3_600_000), b"a.avi",
         Expect(422, "media_too_long"), "media_too_long"),
    Case("MP4 declaring 65535x65535 in tkhd/avc1",
         lambda m: patch_dimensions(m.base.faststart, 65535, 65535), b"a.mp4",
         Expect(422, "corrupt_media"), "corrupt_media",
         "the -count_packets parse logs the decoder's refusal and the probe fails on any error "
         "output (the worker's own probe used to read the SPS's 64x48 and accept)"),
    Case("MP4 declaring 100 hours in mvhd/tkhd/mdhd",
         lambda m: patch_durations(m.base.faststart, 360_000.0), b"a.mp4",
         Expect(422, "media_too_long"), "media_too_long"),
    Case("WAV declaring 4 GB of samples",
         lambda m: wav_with_declared_size(m.base.wav, 0xFFFFFF00), b"a.wav", ACCEPTED, None,
         "ffprobe measures the real 1 s; extraction never reads past the probed duration"),
    # Absurd sample rates (issue #13: they decoded to no audio in the worker)
    Case("WAV declaring 1 Hz", lambda m: wav_with_sample_rate(m.base.wav, 1, data_bytes=8),
         b"a.wav", Expect(422, "corrupt_media"), "corrupt_media", "outside 4 kHz-768 kHz"),
    Case("WAV declaring 2 GHz", lambda m: wav_with_sample_rate(m.base.wav, 2_000_000_000),
         b"a.wav", Expect(422, "corrupt_media"), "corrupt_media", "outside 4 kHz-768 kHz"),
    Case("WAV declaring 4 GHz", lambda m: wav_with_sample_rate(m.base.wav, 4_000_000_000),
         b"a.wav", Expect(422, "corrupt_media"), "corrupt_media",
         "ffprobe itself refuses the header (a negative rate)"),
    # Very many streams
    Case("MKV with 40 audio streams", lambda m: m.base.mkv_streams[40], b"a.mkv",
         Expect(422, "too_many_streams"), "too_many_streams"),
    Case("MKV with 12 audio streams", lambda m: m.base.mkv_streams[12], b"a.mkv", ACCEPTED,
         None, "within the one limit of the one probe (16 streams)"),
]  # fmt: skip
