"""Review and re-dub on the real stack: a finished job's segments read and edited through the API
(If-Match, the edit rules, ownership), rendered again by a real worker (tiny models), and the new
version's audio compared with the previous one's on the decoded waveform."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.api.auth import create_key
from polydub.jobs import JobKeys, JobMessage
from polydub.media.pcm import read_wav
from tests.e2e.harness import (
    Pipeline,
    api_client,
    chromium_page,
    run_polydub,
    stage_output_key,
    wait_settled,
    wait_terminal,
    wait_terminal_after_render,
)
from tests.factories import create_job
from tests.media import make_two_speaker_clip

pytestmark = pytest.mark.e2e

RATE = 48_000
NEW_WORDS = "hola a todos, esto es una frase nueva y bastante larga"


async def _finished_job(pipeline: Pipeline, owner: uuid.UUID, clip: Path) -> uuid.UUID:
    job_id = uuid.uuid4()
    input_key = JobKeys(job_id).input
    await pipeline.store.put_file(input_key, clip, "application/octet-stream")
    job_id = await create_job(pipeline.pool, owner, ["spa"], input_key=input_key)
    message = JobMessage(job_id)
    await pipeline.nc.jetstream().publish(
        pipeline.settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )
    job = await wait_terminal(pipeline.pool, job_id, limit=400)
    assert job["status"] == "succeeded", job["error_message"]
    return job_id


def _decode(path: Path) -> NDArray[np.float32]:
    """Mono float samples at 48 kHz, as ffmpeg decodes the file."""
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-ac",
            "1",
            "-ar",
            str(RATE),
            "-f",
            "f32le",
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, np.float32)


def _outside(samples: NDArray[Any], lo: float, hi: float) -> NDArray[Any]:
    keep = np.ones(samples.shape[0], bool)
    keep[max(0, int(lo * RATE)) : int(hi * RATE)] = False
    kept: NDArray[Any] = samples[keep]
    return kept


async def test_edit_one_translation_and_render_changes_only_its_span(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    pool = pipeline.pool
    a, owner, _ = await api_client(pool, api, "reviewer")
    b, _, _ = await api_client(pool, api, "stranger")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=8.0, with_video=False)
    job_id = await _finished_job(pipeline, owner, clip.path)
    url = f"/jobs/{job_id}/languages/spa/segments"

    read = await a.get(url)
    assert read.status_code == 200, read.text
    body = read.json()
    etag = read.headers["ETag"]
    assert etag == body["etag"] and body["version"] == 1 and not body["edited"]
    segments = body["segments"]
    assert segments and all(s["voice"] == "mms_tts_spa" for s in segments)
    assert all(s["fit"] is not None and "rate" in s["fit"] for s in segments)
    target = max(segments, key=lambda s: s["end"] - s["start"])
    others = [s for s in segments if s["id"] != target["id"]]
    edit = {"segments": [{"id": target["id"], "translation": NEW_WORDS}]}

    # Owned like every job route; If-Match required and checked.
    assert (await b.get(url)).status_code == 404
    assert (await b.patch(url, json=edit, headers={"If-Match": etag})).status_code == 404
    missing = await a.patch(url, json=edit)
    assert missing.status_code == 428 and missing.json()["error"]["code"] == "if_match_required"
    stale = await a.patch(url, json=edit, headers={"If-Match": '"0000"'})
    assert stale.status_code == 412 and stale.json()["error"]["detail"]["etag"] == etag

    # The edit rules: inside the media, no overlap, known speakers and voices, finite.
    rules = [
        ({"id": target["id"], "end": 10_000.0}, "segment_outside_media"),
        ({"id": target["id"], "speaker": "SPEAKER_99"}, "unknown_speaker"),
        ({"id": target["id"], "voice": "mms_tts_xxx"}, "unknown_voice"),
        ({"id": 10_000, "translation": "x"}, "unknown_segment"),
        ({"id": target["id"], "start": target["end"], "end": target["end"]}, "invalid_times"),
    ]
    if others:
        neighbour = others[0]
        rules.append(
            (
                {"id": target["id"], "start": neighbour["start"], "end": neighbour["end"]},
                "segments_overlap",
            )
        )
    for change, code in rules:
        refused = await a.patch(url, json={"segments": [change]}, headers={"If-Match": etag})
        assert refused.status_code == 422, (change, refused.text)
        assert refused.json()["error"]["code"] == code, (change, refused.text)
        assert "field" in refused.json()["error"]["detail"]
    nan = await a.patch(
        url,
        content=b'{"segments": [{"id": 0, "start": NaN}]}',
        headers={"If-Match": etag, "Content-Type": "application/json"},
    )
    assert nan.status_code == 422
    assert (await a.get(url)).headers["ETag"] == etag  # nothing refused was kept

    edited = await a.patch(url, json=edit, headers={"If-Match": etag})
    assert edited.status_code == 200, edited.text
    assert edited.headers["ETag"] != etag and edited.json()["edited"]
    again = await a.get(url)
    assert again.headers["ETag"] == edited.headers["ETag"]
    assert (
        next(s for s in again.json()["segments"] if s["id"] == target["id"])["translation"]
        == NEW_WORDS
    )

    before_wav = await stage_output_key(pool, job_id, "mix", "dubbed_wav")
    before = await pool.fetch(
        "SELECT kind, object_key FROM artifacts WHERE job_id = $1 AND language = 'spa'", job_id
    )
    assert (await b.post(f"/jobs/{job_id}/languages/spa/render")).status_code == 404
    render = await a.post(
        f"/jobs/{job_id}/languages/spa/render", headers={"If-Match": edited.headers["ETag"]}
    )
    assert render.status_code == 202, render.text
    assert render.json()["version"] == 2
    await wait_terminal_after_render(pool, job_id)

    after = await a.get(url)
    assert after.json()["version"] == 2 and not after.json()["edited"]
    by_id = {s["id"]: s for s in after.json()["segments"]}
    assert by_id[target["id"]]["translation"] == NEW_WORDS
    assert [by_id[s["id"]]["translation"] for s in others] == [s["translation"] for s in others]
    stages = await pool.fetch(
        "SELECT stage, metrics FROM job_stages WHERE job_id = $1 AND language = 'spa'", job_id
    )
    metrics = {r["stage"]: r["metrics"] for r in stages}
    assert metrics["translate"]["retranslated_segments"] == 0
    assert metrics["synthesize"]["cached_speech"] >= len(others)  # only the edit spoken again

    # v1 stays downloadable; v2 is the current output.
    listed = await a.get(f"/jobs/{job_id}/languages/spa/versions/1")
    assert listed.status_code == 200
    assert {f["kind"] for f in listed.json()} == {r["kind"] for r in before}
    assert (await b.get(f"/jobs/{job_id}/languages/spa/versions/1")).status_code == 404
    old_audio = next(r["object_key"] for r in before if r["kind"] == "dubbed_audio")

    await _assert_only_the_span_changed(
        pipeline, tmp_path, job_id, target, by_id[target["id"]], before_wav, old_audio
    )
    await a.aclose()
    await b.aclose()


async def _assert_only_the_span_changed(
    pipeline: Pipeline,
    tmp_path: Path,
    job_id: uuid.UUID,
    target: dict[str, Any],
    rendered: dict[str, Any],
    before_wav: str,
    old_audio: str,
) -> None:
    """v2's mix equals v1's sample for sample outside the edited segment's span, and its
    decoded AAC within the codec's tolerance; inside, the edit is heard."""
    pool, store = pipeline.pool, pipeline.store
    new_audio = await pool.fetchval(
        "SELECT object_key FROM artifacts WHERE job_id = $1 AND language = 'spa'"
        " AND kind = 'dubbed_audio'",
        job_id,
    )
    assert new_audio != old_audio
    # The span the edit may touch: the segment's dub, old or new, with the ducking around it.
    old_end = target["start"] + target["fit"]["dubbed_duration"]
    new_end = rendered["start"] + rendered["fit"]["dubbed_duration"]
    lo = target["start"] - 0.08 - 0.05  # the duck's attack
    hi = max(old_end, new_end) + 0.6 + 0.3 + 0.05  # a bridged gap, then the release
    paths = {}
    for name, key in (
        ("v1.wav", before_wav),
        ("v2.wav", await stage_output_key(pool, job_id, "mix", "dubbed_wav")),
        ("v1.m4a", old_audio),
        ("v2.m4a", new_audio),
    ):
        paths[name] = tmp_path / name
        await store.download(key, paths[name])
    wav1, wav2 = (read_wav(paths[n])[0][:, 0] for n in ("v1.wav", "v2.wav"))
    assert wav1.shape == wav2.shape
    assert np.max(np.abs(_outside(wav1 - wav2, lo, hi))) < 1e-6  # the mix: sample for sample
    inside = slice(int(target["start"] * RATE), int(max(old_end, new_end) * RATE))
    assert np.max(np.abs(wav1[inside] - wav2[inside])) > 1e-3  # and the edit is heard

    m4a1, m4a2 = _decode(paths["v1.m4a"]), _decode(paths["v2.m4a"])
    assert abs(m4a1.size - m4a2.size) <= 2048
    n = min(m4a1.size, m4a2.size)
    codec = 0.1  # an AAC frame and its window on each side
    diff = _outside(m4a1[:n] - m4a2[:n], lo - codec, hi + codec)
    signal = _outside(m4a1[:n], lo - codec, hi + codec)
    # The AAC encoder's bit allocation carries from frame to frame, so the same samples decode
    # a little differently after a change: measured about 4% and 5.8% of the signal RMS, so up
    # to -20 dB under it is tolerated (the uncompressed mix above is checked sample for sample).
    diff_rms, signal_rms = (float(np.sqrt(np.mean(x**2))) for x in (diff, signal))
    assert diff_rms < 0.1 * signal_rms, (diff_rms, signal_rms)


async def test_a_review_job_waits_after_translation_until_a_render(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    pool = pipeline.pool
    a, owner, key = await api_client(pool, api, "linguist")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=6.0, with_video=False)
    job_id = uuid.uuid4()
    input_key = JobKeys(job_id).input
    await pipeline.store.put_file(input_key, clip.path, "application/octet-stream")
    job_id = await create_job(pool, owner, ["spa"], input_key=input_key, options={"review": True})
    message = JobMessage(job_id)
    await pipeline.nc.jetstream().publish(
        pipeline.settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )
    job = await wait_settled(pool, job_id, limit=300)
    assert job["status"] == "review" and job["finished_at"] is None  # waits, not finished
    target = await pool.fetchrow(
        "SELECT status, output_version FROM job_targets WHERE job_id = $1", job_id
    )
    assert target["status"] == "review"
    stages = {
        r["stage"]
        for r in await pool.fetch(
            "SELECT stage FROM job_stages WHERE job_id = $1 AND language = 'spa'", job_id
        )
    }
    assert stages == {"translate", "assign_voices"}  # nothing synthesised before approval
    shown = await a.get(f"/jobs/{job_id}")
    assert shown.json()["targets"][0]["status"] == "review"
    read = await a.get(f"/jobs/{job_id}/languages/spa/segments")
    assert read.status_code == 200 and read.json()["segments"]
    assert all(s["fit"] is None for s in read.json()["segments"])

    # The CLI: export as SRT, correct a line, import it (matched by time), render.
    async def cli(*args: str) -> str:
        done = await asyncio.to_thread(
            run_polydub, *args, "--api", api, "--key", key, env=dict(os.environ), timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    srt = await cli("jobs", "segments", str(job_id), "--lang", "spa", "--format", "srt")
    blocks = srt.strip("\n").split("\n\n")
    assert len(blocks) == len(read.json()["segments"])
    head = blocks[0].splitlines()[:2]
    assert head[0] == "1" and " --> " in head[1]
    blocks[0] = "\n".join([*head, "una línea corregida"])
    corrected = tmp_path / "corrected.srt"
    corrected.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    imported = await cli(
        "jobs", "segments", str(job_id), "--lang", "spa", "--import", str(corrected)
    )
    assert "1 segment(s) edited" in imported
    rendering = await cli("jobs", "render", str(job_id), "--lang", "spa")
    assert "rendering version 1" in rendering  # the first outputs
    await wait_terminal_after_render(pool, job_id)
    after = (await a.get(f"/jobs/{job_id}/languages/spa/segments")).json()["segments"]
    assert after[0]["translation"] == "una línea corregida"
    kinds = {
        r["kind"]
        for r in await pool.fetch(
            "SELECT kind FROM artifacts WHERE job_id = $1 AND language = 'spa'", job_id
        )
    }
    assert "dubbed_audio" in kinds and "subtitles_srt" in kinds
    await a.aclose()


async def test_web_page_edits_a_segment_and_renders_a_new_version(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    pool = pipeline.pool
    key = await create_key(pool, "web-reviewer")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=8.0, with_video=False)
    job_id = await _finished_job(pipeline, key.id, clip.path)
    headers = {"Authorization": f"Bearer {key.key}"}
    async with httpx.AsyncClient(base_url=f"{api}/api/v1", headers=headers) as client:
        segments = (await client.get(f"/jobs/{job_id}/languages/spa/segments")).json()["segments"]
    target = max(segments, key=lambda s: s["end"] - s["start"])
    before_wav = await stage_output_key(pool, job_id, "mix", "dubbed_wav")
    old_audio = await pool.fetchval(
        "SELECT object_key FROM artifacts WHERE job_id = $1 AND language = 'spa'"
        " AND kind = 'dubbed_audio'",
        job_id,
    )
    async with chromium_page() as (page, errors):
        await page.goto(api + "/")
        await page.fill("#api-key", key.key)
        await page.click("#key-form button")
        await page.goto(f"{api}/?review#job={job_id}")
        await page.wait_for_selector("#review:not([hidden])", timeout=60_000)
        assert (await page.text_content("#review-version") or "").startswith("version 1")
        rows = page.locator("#review-table tbody tr")
        assert await rows.count() == len(segments)
        row = page.locator(f"#review-table tr[data-id='{target['id']}']")
        await row.locator(".edit-translation").fill(NEW_WORDS)
        await page.click("#render")
        version = page.locator("#review-version", has_text="version 2")
        await version.wait_for(timeout=300_000)
        shown = await row.locator(".edit-translation").input_value()
        assert shown == NEW_WORDS
        assert errors == []
    async with httpx.AsyncClient(base_url=f"{api}/api/v1", headers=headers) as client:
        after = (await client.get(f"/jobs/{job_id}/languages/spa/segments")).json()
    rendered = next(s for s in after["segments"] if s["id"] == target["id"])
    assert after["version"] == 2 and rendered["translation"] == NEW_WORDS
    await _assert_only_the_span_changed(
        pipeline, tmp_path, job_id, target, rendered, before_wav, old_audio
    )
