"""The one sniff of both tiers: the API's streaming upload check (``sniff`` on the first bytes)
and the worker's probe (``sniff_file``) answer alike."""

from pathlib import Path

import pytest

from polydub.api.errors import status_for
from polydub.errors import InvalidInput
from polydub.media.sniff import FAMILIES, FORMAT_WHITELIST, SNIFF_BYTES, sniff, sniff_file

pytestmark = pytest.mark.unit

PAD = b"\x00" * 32


@pytest.mark.parametrize(
    ("head", "family"),
    [
        (b"\x00\x00\x00\x20ftypisom", "mp4"),
        (b"\x00\x00\x00\x20ftypqt  ", "mov"),
        (b"\x00\x00\x00\x20ftypM4A ", "m4a"),
        (b"\x00\x00\x00\x08wide\x00\x00", "mov"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "matroska"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"RIFF\x24\x00\x00\x00AVI LIST", "avi"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02\x00\x00", "ogg"),
        (b"ID3\x04\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64\x00\x00", "mp3"),
    ],
)
def test_known_families(tmp_path: Path, head: bytes, family: str) -> None:
    path = tmp_path / "upload"
    path.write_bytes(head + PAD)
    assert sniff_file(path).family == family
    assert sniff(head + PAD) == sniff_file(path)  # the API's bytes and the worker's file agree


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"#EXTM3U\n#EXTINF:10,\nhttp://example.com/a.ts\n", "playlist_not_allowed"),
        (b"\xef\xbb\xbf#EXTM3U\n#EXT-X-VERSION:3\n", "playlist_not_allowed"),
        (b"ffconcat version 1.0\nfile /etc/passwd\n", "playlist_not_allowed"),
        (b"file 'a.mp4'\nfile 'b.mp4'\n", "playlist_not_allowed"),
        (b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash"></MPD>', "playlist_not_allowed"),
        (b"[playlist]\nFile1=http://x/y.mp3\n", "playlist_not_allowed"),
        (b"v=0\no=- 0 0 IN IP4 127.0.0.1\n", "playlist_not_allowed"),
        (b"\xff\xf1\x50\x80\x00\x1f\xfc" + PAD, "unsupported_media_type"),  # ADTS AAC, no container
        (b"GIF89a" + PAD, "unsupported_media_type"),
        (b"<html><body>hi</body></html>", "unsupported_media_type"),
        # Short and unknown is an unknown format (the API's code; the worker said corrupt_media).
        (b"short", "unsupported_media_type"),
        (b"", "empty_file"),  # the same code as the multipart parser's for an empty form part
    ],
)
def test_rejected(tmp_path: Path, content: bytes, code: str) -> None:
    path = tmp_path / "upload.mp4"  # the name says nothing: only the bytes count
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as err:
        sniff_file(path)
    assert err.value.code == code


@pytest.mark.parametrize(
    ("head", "container"),
    [
        (b"\0\0\0\x18ftypisom\0\0\0\0", "mp4"),
        (b"\0\0\0\x14ftypqt  \0\0\0\0", "mov"),
        (b"\0\0\0\x1cftypM4A \0\0\0\0", "m4a"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "matroska"),
        (b"RIFF\x10\0\0\0AVI LIST", "avi"),
        (b"RIFF\x10\0\0\0WAVEfmt ", "wav"),
        (b"ID3\x04\0\0\0\0\0\0", "mp3"),
        (b"\xff\xfb\x90\x00", "mp3"),
        (b"fLaC\0\0\0\x22", "flac"),
        (b"OggS\0\x02\0\0", "ogg"),
    ],
)
def test_sniff_accepts_the_allowed_containers(head: bytes, container: str) -> None:
    assert sniff(head + b"\0" * 64).family == container


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (b"#EXTM3U\n#EXTINF:1,\nhttp://x/a.ts", "playlist_not_allowed"),
        (b"\xef\xbb\xbf#EXTM3U\n", "playlist_not_allowed"),
        (b"ffconcat version 1.0\nfile 'a.mp4'", "playlist_not_allowed"),
        (b"file '/etc/passwd'\n", "playlist_not_allowed"),
        (b"<?xml version='1.0'?><MPD>", "playlist_not_allowed"),
        (b"[playlist]\nFile1=http://x", "playlist_not_allowed"),
        (b"\x89PNG\r\n\x1a\n\0\0", "unsupported_media_type"),
        (b"\x7fELF\x02\x01\x01\0", "unsupported_media_type"),
        (b"%PDF-1.7\n", "unsupported_media_type"),
        (b"PK\x03\x04", "unsupported_media_type"),
    ],
)
def test_sniff_refuses_the_rest_with_415(head: bytes, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        sniff(head)
    assert caught.value.code == code
    assert status_for(caught.value) == 415  # the API answers a type refusal 415 by its code


def test_a_playlist_behind_blank_lines_is_seen_in_the_sniffed_bytes() -> None:
    # The API sniffed 64 bytes (this was "unsupported_media_type" there) and the worker 4096
    # ("playlist_not_allowed"): one number of bytes now, one answer.
    playlist = b"\r\n" * 50 + b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n"
    assert 64 < len(playlist) < SNIFF_BYTES
    with pytest.raises(InvalidInput) as caught:
        sniff(playlist[:SNIFF_BYTES])
    assert caught.value.code == "playlist_not_allowed"


def test_one_allow_list_of_demuxers() -> None:
    # Every family names the demuxer it must be read with; the -format_whitelist given to every
    # ffmpeg/ffprobe run on user media is exactly those demuxers.
    demuxers = {f.demuxer for f in FAMILIES.values()}
    whitelist = FORMAT_WHITELIST.split(",")
    assert len(whitelist) == len(set(whitelist))
    assert set(whitelist) == {name for d in demuxers for name in d.split(",")}
    assert demuxers == {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "wav", "mp3", "flac",
                        "ogg"}  # fmt: skip
    assert {f.family for f in FAMILIES.values() if not f.video_allowed} == {
        "wav", "mp3", "flac", "ogg"}  # fmt: skip
