import subprocess
from pathlib import Path

import pytest

from polydub.media.extract import extract_mix_wav
from polydub.media.mux import container_for, encode_audio, mux, stream_md5
from polydub.media.probe import probe
from tests.media import make_video

pytestmark = pytest.mark.integration


def remux(tmp_path: Path, name: str, video_codec: str | None = None) -> tuple[Path, Path, str]:
    source = make_video(tmp_path / name, 2.0, video_codec=video_codec)
    info = probe(source)
    wav = extract_mix_wav(source, tmp_path / "mix.wav", media_duration=info.audio_duration)
    result = mux(source, wav.path, tmp_path / "out", video_codecs=[v.codec for v in info.video],
                 language="spa", duration=info.duration)  # fmt: skip
    assert stream_md5(result.path) == stream_md5(source)  # the video is copied bit for bit
    out = probe(result.path)
    assert [v.codec for v in out.video] == [v.codec for v in info.video]
    assert [(a.codec, a.channels, a.language) for a in out.audio] == [("aac", 2, "spa")]
    assert abs(out.audio_duration - info.audio_duration) <= 0.05
    assert abs(out.duration - info.duration) <= 0.05
    return source, result.path, result.container


def test_mp4_h264(tmp_path: Path) -> None:
    _, out, container = remux(tmp_path, "in.mp4")
    assert container == "mp4" and probe(out).format_name.startswith("mov,mp4")


def test_webm_vp9_goes_into_mp4(tmp_path: Path) -> None:
    _, _, container = remux(tmp_path, "in.webm")
    assert container == "mp4"


def test_vp8_goes_into_matroska(tmp_path: Path) -> None:
    _, out, container = remux(tmp_path, "in.webm", video_codec="libvpx")
    assert container == "matroska" and probe(out).family == "matroska"


def test_container_choice() -> None:
    assert container_for(["h264"]) == "mp4" and container_for(["hevc", "av1"]) == "mp4"
    assert container_for(["vp8"]) == "matroska" and container_for(["theora"]) == "matroska"


def test_encode_audio_track(tmp_path: Path) -> None:
    source = make_video(tmp_path / "in.mp4", 2.0)
    wav = extract_mix_wav(source, tmp_path / "mix.wav", media_duration=2.0)
    m4a = encode_audio(wav.path, tmp_path / "dub.m4a", language="fra")
    info = probe(m4a)
    assert info.family == "m4a" and not info.has_video
    assert info.audio[0].language == "fra" and abs(info.duration - 2.0) <= 0.05


def test_audio_that_starts_late_stays_late(tmp_path: Path) -> None:
    base = make_video(tmp_path / "base.mp4", 2.0)
    shifted = tmp_path / "shifted.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(base), "-itsoffset", "0.5", "-i", str(base),
                    "-map", "0:v", "-map", "1:a", "-c", "copy", str(shifted)], check=True)  # fmt: skip
    info = probe(shifted)
    assert info.audio_offset == pytest.approx(0.5, abs=0.03)
    wav = extract_mix_wav(shifted, tmp_path / "mix.wav", media_duration=info.audio_duration)
    out = mux(shifted, wav.path, tmp_path / "out.mp4", video_codecs=["h264"],
              audio_offset=info.audio_offset)  # fmt: skip
    # within one AAC frame (21 ms): the encoder's priming is placed differently on re-encode
    assert probe(out.path).audio_offset == pytest.approx(info.audio_offset, abs=0.025)
    assert stream_md5(out.path) == stream_md5(shifted)


@pytest.mark.parametrize("name, video_codec", [("in.mp4", None), ("in.webm", "libvpx")])
def test_encoded_audio_is_muxed_by_copy(tmp_path: Path, name: str, video_codec: str | None) -> None:
    source = make_video(tmp_path / name, 2.0, video_codec=video_codec)
    info = probe(source)
    wav = extract_mix_wav(source, tmp_path / "mix.wav", media_duration=info.audio_duration)
    m4a = encode_audio(wav.path, tmp_path / "dub.m4a", language="spa")
    result = mux(source, m4a, tmp_path / "out", video_codecs=[v.codec for v in info.video],
                 language="spa", copy_audio=True, duration=info.duration)  # fmt: skip
    assert stream_md5(result.path) == stream_md5(source)
    # the muxed AAC is the M4A's, packet for packet: encoded once
    assert stream_md5(result.path, "0:a") == stream_md5(m4a, "0:a")
    out = probe(result.path)
    assert [(a.codec, a.channels, a.language) for a in out.audio] == [("aac", 2, "spa")]
    assert abs(out.audio_duration - info.audio_duration) <= 0.05
    assert abs(out.duration - info.duration) <= 0.05


def test_copied_audio_that_starts_late_stays_late(tmp_path: Path) -> None:
    base = make_video(tmp_path / "base.mp4", 2.0)
    shifted = tmp_path / "shifted.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(base), "-itsoffset", "0.5", "-i", str(base),
                    "-map", "0:v", "-map", "1:a", "-c", "copy", str(shifted)], check=True)  # fmt: skip
    info = probe(shifted)
    wav = extract_mix_wav(shifted, tmp_path / "mix.wav", media_duration=info.audio_duration)
    m4a = encode_audio(wav.path, tmp_path / "dub.m4a")
    out = mux(shifted, m4a, tmp_path / "out.mp4", video_codecs=["h264"],
              audio_offset=info.audio_offset, copy_audio=True)  # fmt: skip
    assert probe(out.path).audio_offset == pytest.approx(info.audio_offset, abs=0.025)
    assert abs(probe(out.path).audio_duration - info.audio_duration) <= 0.05
