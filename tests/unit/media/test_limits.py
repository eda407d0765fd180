"""One Limits, built from Settings, and one media record for the job (API and worker alike)."""

import pytest

from polydub.media.probe import AudioStream, Limits, MediaInfo, StreamRef, VideoStream
from polydub.settings import Settings

pytestmark = pytest.mark.unit


def test_default_limits_are_the_default_settings() -> None:
    assert Limits() == Limits.from_settings(Settings())
    assert Limits().probe_timeout == 30.0  # the stricter of the former 60 s (API) and 30 s


def test_limits_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYDUB_MEDIA_MAX_SECONDS", "90")
    monkeypatch.setenv("POLYDUB_MEDIA_MAX_STREAMS", "4")
    monkeypatch.setenv("POLYDUB_MEDIA_PROBE_TIMEOUT_SECONDS", "12.5")
    limits = Limits.from_settings(Settings())
    assert (limits.max_duration, limits.max_streams, limits.probe_timeout) == (90.0, 4, 12.5)


def test_the_api_s_old_timeout_name_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYDUB_API_PROBE_TIMEOUT_SECONDS", "45")
    assert Limits.from_settings(Settings()).probe_timeout == 45.0
    monkeypatch.setenv("MEDIA_PROBE_TIMEOUT_SECONDS", "1")  # without the prefix: not ours
    assert Settings().media_probe_timeout_seconds == 45.0
    assert Settings(media_probe_timeout_seconds=3).media_probe_timeout_seconds == 3.0


def test_binaries_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Settings().ffmpeg, Settings().ffprobe) == ("ffmpeg", "ffprobe")
    monkeypatch.setenv("POLYDUB_FFMPEG", "/opt/ffmpeg/bin/ffmpeg")
    monkeypatch.setenv("POLYDUB_FFPROBE", "/opt/ffmpeg/bin/ffprobe")
    assert (Settings().ffmpeg, Settings().ffprobe) == (
        "/opt/ffmpeg/bin/ffmpeg", "/opt/ffmpeg/bin/ffprobe")  # fmt: skip


def test_the_media_record_has_the_api_summary_and_every_field() -> None:
    info = MediaInfo(
        family="matroska", format_name="matroska,webm", duration=12.34567, size_bytes=1000,
        bit_rate=None,
        video=(VideoStream(0, "vp9", 640, 360, 25.0, 12.3),),
        audio=(AudioStream(1, "opus", 48000, 2, 12.3, "eng"), AudioStream(2, "opus", 48000, 1, None)),
        streams=(StreamRef(0, "video", "vp9"), StreamRef(1, "audio", "opus"),
                 StreamRef(2, "audio", "opus"), StreamRef(3, "subtitle", "webvtt")),
    )  # fmt: skip
    record = info.to_dict()
    summary = {
        "container": "matroska",
        "content_type": "video/x-matroska",
        "duration_seconds": 12.346,
        "has_video": True,
        "width": 640,
        "height": 360,
        "audio_streams": 2,
    }
    assert {k: record[k] for k in summary} == summary
    assert record["streams"][3] == {"index": 3, "codec_type": "subtitle", "codec_name": "webvtt"}
    assert record["audio"][0]["language"] == "eng" and record["duration"] == 12.34567
    assert info.stream_count == 4 and info.audio_duration == 12.3
