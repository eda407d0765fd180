from pathlib import Path

import pytest

from polydub.errors import InvalidInput
from polydub.orchestrator.media.probe import sniff

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
    assert sniff(path) == family


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
        (b"short", "corrupt_media"),
    ],
)
def test_rejected(tmp_path: Path, content: bytes, code: str) -> None:
    path = tmp_path / "upload.mp4"  # the name says nothing: only the bytes count
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as err:
        sniff(path)
    assert err.value.code == code
