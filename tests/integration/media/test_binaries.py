"""POLYDUB_FFMPEG / POLYDUB_FFPROBE name the binaries every ffmpeg/ffprobe run starts: the API's
preview, the probe of both tiers and the sample media go through polydub.media's runner, so a
wrapper script given there sees each of their command lines."""

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from polydub.api.preview import make_preview
from polydub.infra.storage import ObjectStore
from polydub.media.probe import probe
from polydub.settings import Settings, get_settings
from polydub.stack import Stack
from tests.media import make_video

pytestmark = pytest.mark.integration


def _wrapper(folder: Path, tool: str, log: Path) -> Path:
    """A script that appends its name and arguments to ``log``, then runs the real ``tool``."""
    real = shutil.which(tool)
    assert real is not None
    script = folder / f"wrapped-{tool}"
    script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexec "{real}" "$@"\n')
    script.chmod(0o755)
    return script


@pytest.fixture
def wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Both binaries wrapped (through the environment, as a deployment sets them); the log."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("POLYDUB_FFMPEG", str(_wrapper(tmp_path, "ffmpeg", log)))
    monkeypatch.setenv("POLYDUB_FFPROBE", str(_wrapper(tmp_path, "ffprobe", log)))
    get_settings.cache_clear()  # the runner reads get_settings(): read the environment again
    yield log
    get_settings.cache_clear()


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_probe_runs_the_configured_ffprobe(wrapped: Path, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.mp4", 1.0, size="64x48")
    made = _calls(wrapped)
    assert made and made[0].startswith("ffmpeg ")  # polydub.samples runs it too
    info = probe(clip)
    assert info.duration == pytest.approx(1.0, abs=0.08)
    (call,) = _calls(wrapped)[len(made) :]
    assert call.startswith("ffprobe ") and "-count_packets" in call
    assert f"file:{clip}" in call and "-protocol_whitelist file" in call


async def test_preview_runs_the_configured_ffmpeg(
    wrapped: Path, tmp_path: Path, services: Stack, stack_settings: Settings
) -> None:
    store = ObjectStore(stack_settings)
    await store.ensure_bucket()
    source = make_video(tmp_path / "dubbed.mp4", 2.0, size="64x48")
    job_id = uuid.uuid4()
    source_key = f"jobs/{job_id}/outputs/spa/video.mp4"
    await store.put_file(source_key, source, content_type="video/mp4")
    made = _calls(wrapped)
    clip = await make_preview(
        store, stack_settings, owner=uuid.uuid4(), job_id=job_id, language="spa",
        source_key=source_key, is_video=True, start=0.5, end=1.5,
    )  # fmt: skip
    assert clip.size_bytes > 64 and await store.exists(clip.key)
    calls = _calls(wrapped)[len(made) :]
    assert calls and all(c.startswith("ffmpeg ") for c in calls)
    assert "-ss 0.500" in calls[0] and "-protocol_whitelist file" in calls[0]
    assert "-format_whitelist" in calls[0]  # the one demuxer allow-list
