"""probe() on real media made with ffmpeg: accepted containers with exact stream facts, and every
refusal code."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from polydub.errors import InvalidInput
from polydub.media.probe import Limits, probe
from tests.media import make_audio, make_video, tone

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probe")


@pytest.fixture(scope="module")
def mp4(media: Path) -> Path:
    return make_video(media / "a.mp4", 2.0)


def _code(path: Path, limits: Limits | None = None) -> str:
    with pytest.raises(InvalidInput) as err:
        probe(path, limits or Limits())
    return err.value.code


@pytest.mark.parametrize(
    ("name", "family", "format_name", "vcodec", "acodec"),
    [
        ("a.mp4", "mp4", "mov,mp4,m4a,3gp,3g2,mj2", "h264", "aac"),
        ("a.mov", "mov", "mov,mp4,m4a,3gp,3g2,mj2", "h264", "aac"),
        ("a.mkv", "matroska", "matroska,webm", "h264", "aac"),
        ("a.webm", "matroska", "matroska,webm", "vp9", "opus"),
        ("a.avi", "avi", "avi", "mpeg4", "mp3"),
    ],
)
def test_video_containers(
    media: Path, name: str, family: str, format_name: str, vcodec: str, acodec: str
) -> None:
    path = make_video(media / name, 1.0, size="64x48")
    info = probe(path)
    assert (info.family, info.format_name) == (family, format_name)
    assert info.size_bytes == path.stat().st_size and info.stream_count == 2
    (video,) = info.video
    assert (video.codec, video.width, video.height, video.fps) == (vcodec, 64, 48, 25.0)
    (audio,) = info.audio
    assert audio.codec == acodec and audio.channels == 1
    assert audio.sample_rate == 48000
    assert info.duration == pytest.approx(1.0, abs=0.08)
    assert info.has_video and info.to_dict()["video"][0]["width"] == 64


@pytest.mark.parametrize(
    ("name", "family", "acodec"),
    [("a.wav", "wav", "pcm_s16le"), ("a.mp3", "mp3", "mp3"), ("a.flac", "flac", "flac"),
     ("a.ogg", "ogg", "vorbis"), ("a.m4a", "m4a", "aac")],
)  # fmt: skip
def test_audio_only_containers(media: Path, name: str, family: str, acodec: str) -> None:
    info = probe(make_audio(media / name, tone(1.0)))
    assert info.family == family and not info.has_video
    assert [a.codec for a in info.audio] == [acodec] and info.audio[0].sample_rate == 48000
    assert info.duration == pytest.approx(1.0, abs=0.06)


def test_wav_duration_is_exact(media: Path) -> None:
    info = probe(make_audio(media / "exact.wav", tone(1.5)))
    assert info.duration == 1.5 and info.audio_duration == 1.5 and info.audio_offset == 0.0


def test_limits(mp4: Path) -> None:
    assert _code(mp4, Limits(max_bytes=1000)) == "media_too_large"
    assert _code(mp4, Limits(max_duration=1.5)) == "media_too_long"
    assert _code(mp4, Limits(max_width=100)) == "resolution_too_large"
    assert _code(mp4, Limits(max_height=100)) == "resolution_too_large"
    assert _code(mp4, Limits(max_streams=1)) == "too_many_streams"
    assert _code(mp4, Limits(allowed_families=frozenset({"matroska"}))) == "unsupported_media_type"
    assert probe(mp4, Limits(max_duration=2.5, max_width=160, max_streams=2)).duration == 2.0


def test_no_audio_stream(media: Path) -> None:
    assert _code(make_video(media / "silent.mp4", 1.0, with_audio=False)) == "no_audio_stream"


def test_playlists_and_concat_lists_are_refused(media: Path, mp4: Path) -> None:
    m3u8 = media / "list.m3u8"
    m3u8.write_text(f"#EXTM3U\n#EXTINF:2,\n{mp4}\n#EXT-X-ENDLIST\n")
    assert _code(m3u8) == "playlist_not_allowed"
    concat = media / "list.mp4"  # a misleading name changes nothing
    concat.write_text(f"ffconcat version 1.0\nfile '{mp4}'\n")
    assert _code(concat) == "playlist_not_allowed"


def test_corrupt_and_truncated_media(media: Path, mp4: Path) -> None:
    truncated = media / "truncated.mp4"
    truncated.write_bytes(mp4.read_bytes()[:600])
    assert _code(truncated) == "corrupt_media"
    garbage = media / "garbage.mkv"
    garbage.write_bytes(b"\x1a\x45\xdf\xa3" + np.random.default_rng(1).bytes(4000))
    assert _code(garbage) == "corrupt_media"
    fake = media / "fake.mp4"  # MP4 magic, then an MP3 stream: ffprobe disagrees with the magic
    fake.write_bytes(b"\x00\x00\x00\x08ftyp" + make_audio(media / "x.mp3", tone(0.5)).read_bytes())
    assert _code(fake) in {"corrupt_media", "unsupported_media_type"}


def test_file_names_are_never_protocols_or_options(media: Path, mp4: Path) -> None:
    for name in ("concat:a.mp4|b.mp4", "-i", "http:example.com"):
        odd = media / "odd" / name
        odd.parent.mkdir(exist_ok=True)
        shutil.copy(mp4, odd)
        assert probe(odd).duration == 2.0


def test_only_regular_files(media: Path) -> None:
    fifo = media / "fifo.mp4"
    os.mkfifo(fifo)
    assert _code(fifo) == "unsupported_media_type"
    assert _code(media) == "unsupported_media_type"  # a directory
