"""The API's upload validation and the worker's validate stage accept and refuse the same files,
because they are the same functions: polydub.media's sniff (the API's streaming upload parser)
and probe with ``Limits.from_settings`` (the API's job intake and the worker's validate stage).

The inputs are ones on which the two tiers' former probes disagreed."""

import asyncio
import importlib
import pkgutil
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import polydub.api
import polydub.orchestrator
from polydub.api import multipart
from polydub.errors import PolydubError
from polydub.media import probe as probe_module
from polydub.media import sniff as sniff_module
from polydub.orchestrator.stages import ingest
from polydub.settings import Settings
from tests.integration.api.helpers import multipart_body
from tests.integration.hostile.corpus import STBL, corrupt_box, patch_dimensions
from tests.media import make_audio, make_video, tone

pytestmark = pytest.mark.integration

SHARED = {
    "probe": probe_module.probe,
    "sniff": sniff_module.sniff,
    "sniff_file": sniff_module.sniff_file,
    "Limits": probe_module.Limits,
    "MediaInfo": probe_module.MediaInfo,
}


# What the worker's validate stage calls (the name it imports, looked up in its module).
WORKER_PROBE: Callable[[Path, probe_module.Limits], probe_module.MediaInfo] = vars(ingest)["probe"]


def _modules(package: types.ModuleType) -> list[types.ModuleType]:
    names = pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    return [importlib.import_module(info.name) for info in names]


def test_both_tiers_hold_the_shared_functions_and_no_copies() -> None:
    holders: dict[str, set[str]] = {name: set() for name in SHARED}
    for module in _modules(polydub.api) + _modules(polydub.orchestrator):
        for name, shared in SHARED.items():
            if hasattr(module, name):
                assert getattr(module, name) is shared, f"{module.__name__}.{name} is a copy"
                holders[name].add(module.__name__)
    assert vars(multipart)["sniff"] is sniff_module.sniff  # the streaming check of an upload
    assert WORKER_PROBE is probe_module.probe
    assert any(m.startswith("polydub.api.") for m in holders["probe"])  # the API's job intake
    assert any(m.startswith("polydub.api.") for m in holders["Limits"])
    assert "polydub.orchestrator.services" in holders["Limits"]  # Services.limits, from Settings


def _wav(folder: Path) -> bytes:
    return make_audio(folder / "ok.wav", tone(0.5)).read_bytes()


def _mp4(folder: Path) -> bytes:
    return make_video(folder / "base.mp4", 1.0, size="64x48").read_bytes()


# name -> (bytes of the upload, the one answer: a refusal code or None for accepted)
CASES: dict[str, tuple[Callable[[Path], bytes], str | None]] = {
    # The API sniffed 64 bytes (unsupported_media_type), the worker 4096 (playlist_not_allowed).
    "playlist behind 100 blank bytes": (
        lambda _: b"\r\n" * 50 + b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n",
        "playlist_not_allowed",
    ),
    # Past the sniffed bytes nothing is read: unknown, for both, however it goes on.
    "playlist behind 5000 blank bytes": (
        lambda _: b"\n" * 5000 + b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n",
        "unsupported_media_type",
    ),
    # The API accepted a video stream without a size; the worker refused it.
    "mp4 with a garbage stbl": (lambda d: corrupt_box(_mp4(d), STBL), "corrupt_media"),
    # The worker accepted (it read the SPS); the API refused on ffprobe's error output.
    "mp4 declaring 65535x65535": (
        lambda d: patch_dimensions(_mp4(d), 65535, 65535),
        "corrupt_media",
    ),
    "empty file": (lambda _: b"", "empty_file"),
    "wav": (_wav, None),
}


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _api_answer(data: bytes, spool: Path, settings: Settings) -> str | None:
    """What POST /jobs runs on a multipart upload: the streaming parser (it sniffs the first
    bytes as they arrive), then the probe in a thread with the Settings' Limits."""
    body, content_type = multipart_body([("target_languages", "spa")], data, b"a.mp4")
    try:
        upload = await multipart.receive(
            _chunks(body), multipart.boundary_of(content_type), spool, settings.media_max_bytes
        )
        assert upload.path is not None
        limits = probe_module.Limits.from_settings(settings)
        await asyncio.to_thread(probe_module.probe, upload.path, limits)
    except PolydubError as exc:
        return exc.code
    return None


def _worker_answer(data: bytes, path: Path, settings: Settings) -> str | None:
    """What the validate stage runs on the stored input: its probe with the Services' Limits."""
    path.write_bytes(data)
    try:
        WORKER_PROBE(path, probe_module.Limits.from_settings(settings))
    except PolydubError as exc:
        return exc.code
    return None


@pytest.mark.parametrize("name", list(CASES))
async def test_api_upload_and_worker_validate_answer_alike(name: str, tmp_path: Path) -> None:
    make, expected = CASES[name]
    data = make(tmp_path)
    settings = Settings()
    api = await _api_answer(data, tmp_path, settings)
    worker = _worker_answer(data, tmp_path / "stored", settings)
    assert api == worker == expected
