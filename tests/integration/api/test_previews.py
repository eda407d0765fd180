"""Previews against the real API, S3 and ffmpeg: the API never encodes (a VP8 output is cut from
the worker's preview rendition by stream copy, or refused), ranges snap to the grid so nearby
ranges are one cached clip, and cuts at once are bounded per key.

Every ffmpeg the API starts goes through a wrapper (POLYDUB_FFMPEG, as a deployment sets it)
that logs its command line: what the API ran is read from that log.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from polydub.api.preview import SLOTS
from polydub.infra.storage import ObjectStore
from polydub.media.preview import encode_rendition
from polydub.media.probe import probe
from polydub.settings import Settings, get_settings
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import FakeWorker, Media, ffmpeg
from tests.integration.api.test_lifecycle import submit

pytestmark = pytest.mark.integration

ENCODERS = ("libx264", "libvpx", "-c:v", "-c:a", "-vcodec", "-acodec", "-vf", "-af", "-filter")


@pytest.fixture
def api_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """ffmpeg wrapped for this process (the in-process API included); the log of its calls."""
    real = shutil.which("ffmpeg")
    assert real is not None
    log, script = tmp_path / "ffmpeg.log", tmp_path / "wrapped-ffmpeg"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("POLYDUB_FFMPEG", str(script))
    get_settings.cache_clear()  # the runner reads get_settings() at each run
    yield log
    get_settings.cache_clear()


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def vp8(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A dubbed video as the mux stage makes it from a VP8 input (VP8 + AAC in Matroska, 12 s),
    and its preview rendition as the worker makes it."""
    folder = tmp_path_factory.mktemp("vp8")
    mkv, rendition = folder / "dubbed.mkv", folder / "preview.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=size=320x240:rate=10"),
        *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"),
        *("-t", "12", "-c:v", "libvpx", "-b:v", "200k", "-c:a", "aac", "-f", "matroska"),
        str(mkv),
    )
    encode_rendition(mkv, rendition, grid=5.0, duration=12.0)
    return mkv.read_bytes(), rendition.read_bytes()


async def finished_job(
    clients: Clients, media: Media, worker: FakeWorker, store: ObjectStore, **outputs: bytes
) -> str:
    """A job of key a whose spa target succeeded with these outputs (kind -> bytes)."""
    response = await submit(clients.a, media.clip, targets="spa")
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    types = {"dubbed_video": "video/mp4", "preview_video": "video/mp4"}
    if outputs["dubbed_video"][:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska
        types["dubbed_video"] = "video/x-matroska"
    await worker.claim(uuid.UUID(job_id))
    await worker.finish_target(
        uuid.UUID(job_id),
        "spa",
        "succeeded",
        store,
        {kind: (data, types[kind]) for kind, data in outputs.items()},
    )
    await worker.finish_job(uuid.UUID(job_id), "succeeded")
    return job_id


async def preview(
    client: httpx.AsyncClient, job_id: str, start: float, end: float
) -> httpx.Response:
    return await client.get(
        f"/api/v1/jobs/{job_id}/outputs/spa", params={"preview_start": start, "preview_end": end}
    )


async def test_a_vp8_output_costs_the_api_no_encoding(
    clients: Clients,
    media: Media,
    worker: FakeWorker,
    store: ObjectStore,
    vp8: tuple[bytes, bytes],
    api_ffmpeg: Path,
    tmp_path: Path,
) -> None:
    mkv, rendition = vp8
    # A VP8 output with no rendition (made before renditions existed): refused, not encoded.
    bare = await finished_job(clients, media, worker, store, dubbed_video=mkv)
    before = len(calls(api_ffmpeg))
    refused = await preview(clients.a, bare, 1, 3)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "preview_unavailable"
    assert calls(api_ffmpeg)[before:] == []

    # With the worker's rendition: cut by stream copy, on the grid, playable H.264.
    job_id = await finished_job(
        clients, media, worker, store, dubbed_video=mkv, preview_video=rendition
    )
    files = (await clients.a.get(f"/api/v1/jobs/{job_id}/outputs/spa")).json()["files"]
    assert {f["kind"]: f["filename"] for f in files}["preview_video"] == "talk.spa.preview.mp4"
    before = len(calls(api_ffmpeg))
    answer = await preview(clients.a, job_id, 6.2, 8.1)
    assert answer.status_code == 200, answer.text
    got = answer.json()["preview"]
    assert (got["start"], got["end"], got["content_type"]) == (5.0, 10.0, "video/mp4")
    [cut] = calls(api_ffmpeg)[before:]
    assert "-c copy" in cut and not [word for word in ENCODERS if f" {word} " in f" {cut} "]
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(await store.get_bytes(f"jobs/{job_id}/previews/spa/5000-10000.mp4"))
    info = probe(clip)
    assert [v.codec for v in info.video] == ["h264"] and info.video[0].height == 240
    # A keyframe on every grid point: the copy starts exactly at 5 s and lasts the 5 s asked.
    assert info.duration == pytest.approx(5.0, abs=0.15)


async def test_nearby_ranges_are_one_cached_clip(
    clients: Clients, media: Media, worker: FakeWorker, store: ObjectStore, api_ffmpeg: Path
) -> None:
    job_id = await finished_job(
        clients, media, worker, store, dubbed_video=media.long_clip.read_bytes()
    )
    before = len(calls(api_ffmpeg))
    first = await preview(clients.a, job_id, 1.2, 3.9)
    second = await preview(clients.a, job_id, 0.4, 4.6)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    one, two = first.json()["preview"], second.json()["preview"]
    assert (one["start"], one["end"]) == (two["start"], two["end"]) == (0.0, 5.0)
    assert one["size_bytes"] == two["size_bytes"]
    keys = [k for k in await store.list_keys(f"jobs/{job_id}/previews/") if not k.endswith("/")]
    assert keys == [f"jobs/{job_id}/previews/spa/0-5000.mp4"]
    assert len(calls(api_ffmpeg)[before:]) == 1  # the second range was a cache hit


async def test_previews_cut_at_once_are_bounded_per_key(
    clients: Clients,
    media: Media,
    worker: FakeWorker,
    store: ObjectStore,
    api_settings: Settings,
) -> None:
    job_id = await finished_job(
        clients, media, worker, store, dubbed_video=media.long_clip.read_bytes()
    )
    limit = api_settings.api_preview_concurrency_per_key
    assert (await preview(clients.a, job_id, 0, 2)).status_code == 200  # cut and cached
    with contextlib.ExitStack() as busy:
        for _ in range(limit):  # this key's cuts in progress, as long previews would hold them
            busy.enter_context(SLOTS.hold(clients.key_a.id, limit))
        refused = await preview(clients.a, job_id, 5, 6)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "preview_busy"
        assert refused.headers["retry-after"] == "1"
        cached = await preview(clients.a, job_id, 1, 2)  # a cached clip needs no cut
        assert cached.status_code == 200
    assert SLOTS.busy.get(clients.key_a.id) is None
    # Free again: requests at once beyond the limit wait for nothing and never over-admit.
    answers = await asyncio.gather(*(preview(clients.a, job_id, 5, 6) for _ in range(limit + 2)))
    assert {a.status_code for a in answers} <= {200, 429}
    assert any(a.status_code == 200 for a in answers)
    assert SLOTS.busy.get(clients.key_a.id) is None
