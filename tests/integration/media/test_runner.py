"""The ffmpeg runner: how each failure maps into polydub.errors."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from polydub.errors import ConfigurationError, InternalError, InvalidInput, ServiceUnavailable
from polydub.media.runner import (
    file_input,
    file_url,
    has_filter,
    run_ffmpeg,
    run_ffprobe,
)
from polydub.settings import get_settings
from tests.media import make_audio, tone

pytestmark = pytest.mark.integration

ENDLESS = ["-f", "lavfi", "-i", "sine=frequency=440:duration=100000", "-f", "null", "-"]


def test_timeout_on_user_media_is_permanent_and_on_ours_is_retryable() -> None:
    with pytest.raises(InvalidInput) as err:
        run_ffmpeg(ENDLESS, timeout=0.5, blame="input", what="decode")
    assert err.value.code == "media_too_complex" and not err.value.retryable
    with pytest.raises(ServiceUnavailable) as unavailable:
        run_ffmpeg(ENDLESS, timeout=0.5, blame="internal", what="mix")
    assert unavailable.value.code == "ffmpeg_timeout" and unavailable.value.retryable


def test_failure_on_user_media_is_corrupt_media_with_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(InvalidInput) as err:
        run_ffmpeg([*file_input(bad), "-f", "null", "-"], timeout=30, blame="input", what="x")
    assert err.value.code == "corrupt_media"
    assert isinstance(err.value.detail, dict) and err.value.detail["exit_code"] != 0
    assert "bad.wav" in err.value.detail["stderr"]
    assert str(tmp_path) not in err.value.detail["stderr"] + err.value.message  # folders redacted
    with pytest.raises(InternalError) as internal:
        run_ffmpeg([*file_input(bad), "-f", "null", "-"], timeout=30, blame="internal", what="x")
    assert internal.value.code == "ffmpeg_failed" and internal.value.retryable


def test_protocols_other_than_file_are_refused(tmp_path: Path) -> None:
    # Even a direct URL given as an input is read as a local path under file:.
    assert file_url("http://example.com/a.mp4") == f"file:{Path.cwd()}/http:/example.com/a.mp4"
    args = ["-protocol_whitelist", "file", "-i", "http://127.0.0.1:9/a.mp4", "-f", "null", "-"]
    with pytest.raises(InvalidInput) as err:
        run_ffmpeg(args, timeout=30, blame="input", what="x")
    assert "not on whitelist" in err.value.detail["stderr"]  # type: ignore[index]


def test_demuxer_allow_list(tmp_path: Path) -> None:
    wav = make_audio(tmp_path / "a.wav", tone(0.2))
    concat = tmp_path / "list.txt"
    concat.write_text(f"ffconcat version 1.0\nfile '{wav}'\n")
    with pytest.raises(InvalidInput) as err:
        run_ffprobe([*file_input(concat, options=["-f", "concat"])], timeout=30)
    assert "whitelist" in err.value.detail["stderr"]  # type: ignore[index]


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """The runner reads its binaries from get_settings(): read the environment again, before
    and after the test."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_missing_binary(monkeypatch: pytest.MonkeyPatch, fresh_settings: None) -> None:
    monkeypatch.setenv("POLYDUB_FFMPEG", "/nonexistent/ffmpeg")
    with pytest.raises(ConfigurationError) as err:
        run_ffmpeg(["-version"], timeout=5, blame="internal", what="x")
    assert err.value.code == "ffmpeg_missing"


def test_filters_are_detected() -> None:
    assert has_filter("atempo") and has_filter("ebur128") and not has_filter("no_such_filter")


@pytest.mark.parametrize("nice", [0, 7])
def test_media_runs_at_the_configured_niceness(
    monkeypatch: pytest.MonkeyPatch, fresh_settings: None, tmp_path: Path, nice: int
) -> None:
    """An "ffmpeg" that reports its own niceness, once the runner has had time to set it."""
    reporter = tmp_path / "ffmpeg"
    reporter.write_text("#!/bin/sh\nsleep 0.3\nnice\n")
    reporter.chmod(0o755)
    monkeypatch.setenv("POLYDUB_FFMPEG", str(reporter))
    monkeypatch.setenv("POLYDUB_MEDIA_NICE", str(nice))
    ran = run_ffmpeg([], timeout=30, blame="internal", what="x")
    assert int(ran.stdout) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)
