"""Review on the real stack, the job's side: a ``review`` job waits in 'review' (not finished,
no job.succeeded) until a render approves its language; segments added and deleted in review
are spoken and silenced by the render; the outputs listing names the earlier versions."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest

from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys, JobMessage
from polydub.media.pcm import read_wav
from tests.e2e.harness import (
    Pipeline,
    api_client,
    run_polydub,
    stage_output_key,
    wait_settled,
)
from tests.factories import create_job
from tests.media import make_two_speaker_clip

pytestmark = pytest.mark.e2e

HOOK = "https://hooks.example.invalid/polydub"  # never reached: the rows are what is checked


async def _run(
    pipeline: Pipeline, owner: uuid.UUID, clip: Path, options: dict[str, Any]
) -> uuid.UUID:
    job_id = uuid.uuid4()
    input_key = JobKeys(job_id).input
    await pipeline.store.put_file(input_key, clip, "application/octet-stream")
    job_id = await create_job(
        pipeline.pool, owner, ["spa"], input_key=input_key, options=options, callback_url=HOOK
    )
    message = JobMessage(job_id)
    await pipeline.nc.jetstream().publish(
        pipeline.settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )
    return job_id


async def _settled(pool: asyncpg.Pool, job_id: uuid.UUID) -> asyncpg.Record:
    """wait_settled, saying where the job stood if it never settled (a slow shared machine)."""
    try:
        return await wait_settled(pool, job_id, limit=600)
    except TimeoutError:
        stages = await pool.fetch(
            "SELECT stage, language, status, error_code FROM job_stages WHERE job_id = $1", job_id
        )
        job = await pool.fetchrow("SELECT status, attempt FROM jobs WHERE id = $1", job_id)
        raise AssertionError(f"not settled: {dict(job)} {[dict(r) for r in stages]}") from None


async def _deliveries(pool: asyncpg.Pool, job_id: uuid.UUID) -> set[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT state, language FROM webhook_deliveries WHERE job_id = $1", job_id
    )
    return {(r["state"], r["language"]) for r in rows}


async def _settled_after_render(pool: asyncpg.Pool, job_id: uuid.UUID) -> None:
    # The render's 202 came after it re-queued the job: settled again means rendered.
    job = await _settled(pool, job_id)
    assert job["status"] == "succeeded", job["error_message"]


async def test_a_review_job_waits_unfinished_and_succeeds_once_approved(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    pool = pipeline.pool
    a, owner, _ = await api_client(pool, api, "approver")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=6.0, with_video=False)
    job_id = await _run(pipeline, owner, clip.path, {"review": True})
    job = await _settled(pool, job_id)
    assert (job["status"], job["finished_at"]) == ("review", None)
    # job.review_ready and job.language.review_ready; nothing says succeeded before approval
    assert await _deliveries(pool, job_id) == {("review", ""), ("review", "spa")}
    shown = (await a.get(f"/jobs/{job_id}")).json()
    assert shown["status"] == "review" and shown["targets"][0]["status"] == "review"
    # The event stream ends where the job waits (a follower stops, as at a finished job).
    async with a.stream("GET", f"/jobs/{job_id}/events", timeout=30) as stream:
        states = [
            line
            async for line in stream.aiter_lines()
            if line.startswith("data:") and '"type":"state"' in line
        ]
    assert '"status":"review"' in states[-1]

    render = await a.post(f"/jobs/{job_id}/languages/spa/render")
    assert render.status_code == 202, render.text
    assert render.json()["version"] == 1
    await _settled_after_render(pool, job_id)
    delivered = await _deliveries(pool, job_id)
    assert {("succeeded", ""), ("succeeded", "spa")} <= delivered
    # review_ready went out once: the render did not make it new again
    assert ("review", "") in delivered
    outputs = (await a.get(f"/jobs/{job_id}/outputs/spa")).json()
    assert outputs["version"] == 1 and outputs["versions"] == []
    await a.aclose()


async def test_polydub_dub_ends_when_the_languages_wait_for_review(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    _, _, key = await api_client(pipeline.pool, api, "cli-reviewer")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=4.0, with_video=False)
    done = await asyncio.to_thread(
        run_polydub,
        *("dub", str(clip.path), "--to", "spa", "--review", "--api", api, "--key", key),
        env=dict(os.environ),
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "waits for review" in done.stdout and "polydub jobs render" in done.stdout
    assert not (tmp_path / "polydub-out").exists()  # nothing to download yet


async def test_a_job_in_review_can_be_cancelled(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    pool = pipeline.pool
    a, owner, _ = await api_client(pool, api, "canceller")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=4.0, with_video=False)
    job_id = await _run(pipeline, owner, clip.path, {"review": True})
    assert (await _settled(pool, job_id))["status"] == "review"
    cancelled = await a.delete(f"/jobs/{job_id}")
    assert cancelled.status_code in (200, 202), cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["targets"][0]["status"] == "cancelled"
    assert ("cancelled", "") in await _deliveries(pool, job_id)
    refused = await a.post(f"/jobs/{job_id}/languages/spa/render")
    assert refused.status_code == 409
    await a.aclose()


# One S3 request each (put_bytes is put_stream; a put is a PUT then a HEAD, the stat).
S3_CALLS = ("put_stream", "put_file", "get_bytes", "exists", "download", "open_read", "stat")


def _count_s3(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every object request of this process's stores (the worker's too), as (call, key)."""
    calls: list[tuple[str, str]] = []
    for name in S3_CALLS:
        original = getattr(ObjectStore, name)

        def counted(original: Any = original, name: str = name) -> Any:
            async def call(self: ObjectStore, key: str, *args: Any, **kwargs: Any) -> Any:
                calls.append((name, key))
                return await original(self, key, *args, **kwargs)

            return call

        monkeypatch.setattr(ObjectStore, name, counted())
    return calls


async def test_segments_added_and_deleted_in_review_are_rendered(
    pipeline: Pipeline, api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_s3(monkeypatch)
    pool = pipeline.pool
    a, owner, _ = await api_client(pool, api, "editor")
    b, _, _ = await api_client(pool, api, "outsider")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=8.0, with_video=False)
    # Dubbed over silence: the mix is the dub alone, so a silenced span reads as zeros.
    job_id = await _run(pipeline, owner, clip.path, {"background": "drop"})
    assert (await _settled(pool, job_id))["status"] == "succeeded"
    # The speech a render reuses is one object per language, not one per TTS request.
    said = await stage_output_key(pool, job_id, "synthesize", "speech_cache")
    first = _speech_cache_calls(calls, job_id)
    requests = len(np.load(io.BytesIO(await pipeline.store.get_bytes(said))).files)
    assert first == [("put_stream", said), ("stat", said)], first
    # before: the same PUT and HEAD for each TTS request
    print(f"first run: {len(first)} speech-cache S3 requests; before: {2 * requests}")
    calls.clear()
    url = f"/jobs/{job_id}/languages/spa/segments"
    read = await a.get(url)
    segments = read.json()["segments"]
    # The longest segment is deleted; two new ones go in its first and last fifths, so the
    # middle of its span is left with nothing to say.
    gone = max(segments, key=lambda s: s["end"] - s["start"])
    start, end = gone["start"], gone["end"]
    fifth = (end - start) / 5
    assert fifth > 0.3, segments
    spoken = {"start": start + 0.05, "end": start + fifth, "speaker": gone["speaker"]}
    patch = {
        "delete": [gone["id"]],
        "add": [
            {**spoken, "translation": "una frase añadida"},
            {**spoken, "start": end - fifth, "end": end - 0.05, "source_text": "good morning"},
        ],
    }
    etag = read.headers["ETag"]
    assert (await b.patch(url, json=patch, headers={"If-Match": etag})).status_code == 404
    assert (await a.patch(url, json=patch)).status_code == 428
    bad = await a.patch(
        url, json={"add": [{**spoken, "speaker": "SPEAKER_99"}]}, headers={"If-Match": etag}
    )
    assert bad.status_code == 422 and bad.json()["error"]["detail"]["field"] == "add[0].speaker"
    missing = await a.patch(url, json={"add": [{"start": 1.0}]}, headers={"If-Match": etag})
    assert missing.status_code == 422, missing.text
    edited = await a.patch(url, json=patch, headers={"If-Match": etag})
    assert edited.status_code == 200, edited.text
    new_ids = sorted({s["id"] for s in edited.json()["segments"]} - {s["id"] for s in segments})
    assert len(new_ids) == 2 and min(new_ids) > max(s["id"] for s in segments)
    assert gone["id"] not in {s["id"] for s in edited.json()["segments"]}

    render = await a.post(url.replace("/segments", "/render"), headers={"If-Match": "*"})
    assert render.status_code == 202 and render.json()["version"] == 2
    await _settled_after_render(pool, job_id)
    rendered = _speech_cache_calls(calls, job_id)
    # one read of the run before's speech, one write of this run's (before: a HEAD per TTS
    # request, a GET per hit, a PUT and a HEAD per miss)
    assert sorted(c for c, _ in rendered) == ["get_bytes", "put_stream", "stat"], rendered
    assert ("get_bytes", said) in rendered
    synthesized = await pool.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'synthesize'", job_id
    )
    again = await stage_output_key(pool, job_id, "synthesize", "speech_cache")
    asked = len(np.load(io.BytesIO(await pipeline.store.get_bytes(again))).files)
    hits = synthesized["cached_speech"]
    print(
        f"render: {len(rendered)} speech-cache S3 requests; before: {3 * asked - hits}"
        f" ({asked} TTS requests, {hits} cached)"
    )
    after = {s["id"]: s for s in (await a.get(url)).json()["segments"]}
    assert gone["id"] not in after and set(new_ids) <= set(after)
    assert after[new_ids[0]]["translation"] == "una frase añadida"
    assert after[new_ids[1]]["fit"] is not None  # translated and spoken on render
    metrics = await pool.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'translate'"
        " AND language = 'spa'",
        job_id,
    )
    assert metrics["retranslated_segments"] == 1  # the added line given as source text alone

    # The deleted segment's span is silent wherever no kept segment's dub reaches into it.
    timing = (await _json(pipeline, await stage_output_key(pool, job_id, "synthesize", "timing")))[
        "segments"
    ]
    placed = [(t["start"], t["start"] + t["dubbed_duration"]) for t in timing]
    wav = tmp_path / "mix.wav"
    wav.write_bytes(
        await pipeline.store.get_bytes(await stage_output_key(pool, job_id, "mix", "dubbed_wav"))
    )
    samples, rate = read_wav(wav)
    mono = np.asarray(samples, np.float32).reshape(samples.shape[0], -1).mean(axis=1)
    silent = np.ones(mono.size, bool)
    silent[: int(start * rate)] = False
    silent[int(end * rate) :] = False
    for start, end in placed:
        silent[max(0, int(start * rate) - rate // 10) : int(end * rate) + rate // 10] = False
    assert silent.sum() > 0.05 * rate, placed  # some of its span is left to check
    assert float(np.abs(mono[silent]).max()) < 1e-3

    # The outputs listing names version 1 next to the current version 2.
    listing = (await a.get(f"/jobs/{job_id}/outputs/spa")).json()
    assert listing["version"] == 2 and [v["version"] for v in listing["versions"]] == [1]
    earlier = listing["versions"][0]
    assert earlier["created_at"] and {f["kind"] for f in earlier["files"]} >= {"dubbed_audio"}
    assert all(".v1." in f["filename"] for f in earlier["files"])
    alone = (await a.get(f"/jobs/{job_id}/languages/spa/versions/1")).json()
    assert {f["filename"] for f in alone} == {f["filename"] for f in earlier["files"]}  # one naming
    async with httpx.AsyncClient() as plain:
        link = next(f["url"] for f in earlier["files"] if f["kind"] == "dubbed_audio")
        route = "/api/v1/downloads/"  # the API's own link: fetched from this test's API
        got = await plain.get(f"{api}{link[link.index(route) :]}" if route in link else link)
        assert got.status_code == 200 and got.content
    await a.aclose()
    await b.aclose()


def _speech_cache_calls(calls: list[tuple[str, str]], job_id: uuid.UUID) -> list[tuple[str, str]]:
    legacy = JobKeys(job_id).speech_cache("spa")
    return [(c, k) for c, k in calls if k.startswith(legacy) or k.endswith("/speech_cache.npz")]


async def _json(pipeline: Pipeline, key: str) -> Any:
    return json.loads(await pipeline.store.get_bytes(key))
