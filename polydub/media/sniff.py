"""Which container a file is, from its first bytes (never its name), before any demuxer reads it.

One allow-list for everything that opens user media: ``FAMILIES`` names the containers we accept,
the one ffprobe demuxer each must read as (``probe`` checks the two agree) and its content type;
``FORMAT_WHITELIST`` (every ffmpeg/ffprobe run on user media, ``runner.file_input``) is made from
it. Text that makes a demuxer open other resources (HLS / extended M3U, ffconcat and concat lists,
DASH, SDP, SMIL, ASX, PLS) is refused as ``playlist_not_allowed`` before anything else; an empty
file is ``empty_file``; anything else that is not on the list is ``unsupported_media_type``.

The API sniffs an upload as its first ``SNIFF_BYTES`` arrive; the worker's probe sniffs the same
number of bytes of the stored file, so both answer alike by construction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from polydub.errors import InvalidInput

# The API sniffed 64 bytes and the worker 4096; 4096 (the stricter) holds for both: a playlist
# behind more than 64 bytes of blank lines is still seen as one, and concat lists are recognised
# by their whole first line.
SNIFF_BYTES = 4096

_MOV = "mov,mp4,m4a,3gp,3g2,mj2"


@dataclass(frozen=True)
class MediaFormat:
    family: str  # mp4, mov, m4a, matroska, avi, wav, mp3, flac, ogg
    demuxer: str  # ffprobe's format_name: the only demuxer this family may be read with
    content_type: str
    video_allowed: bool  # False for audio containers: a video stream there is refused


FAMILIES: dict[str, MediaFormat] = {
    f.family: f
    for f in (
        MediaFormat("mp4", _MOV, "video/mp4", True),
        MediaFormat("mov", _MOV, "video/quicktime", True),
        # An M4A brand is an MP4 file and may carry a video track; the mov demuxer reads both.
        MediaFormat("m4a", _MOV, "audio/mp4", True),
        MediaFormat("matroska", "matroska,webm", "video/x-matroska", True),
        MediaFormat("avi", "avi", "video/x-msvideo", True),
        MediaFormat("wav", "wav", "audio/wav", False),
        MediaFormat("mp3", "mp3", "audio/mpeg", False),
        MediaFormat("flac", "flac", "audio/flac", False),
        MediaFormat("ogg", "ogg", "audio/ogg", False),
    )
}
# -format_whitelist of every run on user media: no other demuxer can be chosen, even by probing.
FORMAT_WHITELIST = ",".join(dict.fromkeys(f.demuxer for f in FAMILIES.values()))

# QuickTime files need not start with ftyp; these top-level atoms also open a valid movie. (The
# API required ftyp; the worker took these too. Kept: they select the same allow-listed mov
# demuxer, and probe still requires ffprobe to read the file as mov, so nothing is loosened.)
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot", b"uuid"}
# Prefixes of text that makes a demuxer fetch other resources; the union of both tiers' lists.
_PLAYLIST_PREFIXES = (
    b"#EXTM3U", b"#EXT-X-", b"#EXTINF", b"ffconcat", b"file ", b"file\t", b"<?xml", b"<MPD",
    b"<smil", b"<asx", b"[playlist]", b"v=0",
)  # fmt: skip


def _reject(code: str, message: str) -> InvalidInput:
    return InvalidInput(message, code=code)


def sniff(head: bytes) -> MediaFormat:
    """The container of a file from its first bytes (``SNIFF_BYTES`` or the whole of a shorter
    file); raise ``InvalidInput`` for empty files, playlists and anything not on the list."""
    if not head:
        raise _reject("empty_file", "the file is empty")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    # Playlists first (the API's order): no magic below is text, so nothing is lost, and text
    # that names other files is refused under its own code however the rest looks.
    if text[:16].lower().startswith(tuple(p.lower() for p in _PLAYLIST_PREFIXES)):
        raise _reject(
            "playlist_not_allowed",
            "playlists, concat lists and manifests are not accepted; upload the media itself",
        )
    family = _family(head)
    if family is None:
        raise _reject(
            "unsupported_media_type",
            "the file is not a supported video or audio container "
            "(mp4, mov, m4a, mkv, webm, avi, wav, mp3, flac, ogg)",
        )
    return FAMILIES[family]


def sniff_file(path: str | os.PathLike[str]) -> MediaFormat:
    with open(path, "rb") as fh:
        return sniff(fh.read(SNIFF_BYTES))


def _family(head: bytes) -> str | None:
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
    return None


def _mpeg_audio_frame(head: bytes) -> bool:
    # 11 sync bits, then a version other than "reserved" and layer III. The API took any sync
    # word; this stricter test (the worker's) leaves out ADTS AAC (layer 00), which the mp3
    # demuxer would not read anyway.
    if len(head) < 2:
        return False
    b0, b1 = head[0], head[1]
    return b0 == 0xFF and (b1 & 0xE0) == 0xE0 and (b1 >> 3) & 3 != 1 and (b1 >> 1) & 3 == 1
