"""The web page's rough edges in Chromium: the key hint, errors cleared by a later success, a
refused upload's reset progress, the cancel / retry buttons of a job, a subtitles-only
job's result (no empty player), and a language waiting in review: its own tab and segment
table, with the original media served for any job (not only a file this browser uploaded)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from polydub.api.auth import create_key
from polydub.jobs import JobKeys, JobMessage
from tests.e2e.harness import Pipeline, chromium_page, wait_terminal
from tests.factories import create_job
from tests.media import make_two_speaker_clip

pytestmark = pytest.mark.e2e


async def test_web_page_hints_clears_errors_resets_uploads_and_cancels_and_retries(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    key = await create_key(pipeline.pool, "web-page")
    # Queued by rows only (no message), so it stays queued until the page cancels it.
    job_id = await create_job(pipeline.pool, key.id, ["spa"])
    not_media = tmp_path / "notes.mp4"
    not_media.write_bytes(b"this is not a video at all\n" * 64)
    async with chromium_page() as (page, errors):
        await page.goto(api + "/")
        hint = page.locator("#key-hint")
        assert await hint.is_visible()
        assert "polydub keys create --name NAME" in (await hint.text_content() or "")
        assert await hint.locator("a").get_attribute("href") == "/api/v1/docs"

        await page.fill("#api-key", "pd_wrong")
        await page.click("#key-form button")
        await page.locator("#error:not([hidden])").wait_for(timeout=10_000)
        await page.fill("#api-key", key.key)
        await page.click("#key-form button")
        await page.locator("#key-state", has_text="key accepted").wait_for(timeout=10_000)
        assert await page.locator("#error").is_hidden()
        assert await hint.is_hidden()

        await page.set_input_files("#file", str(not_media))
        await page.check("input[name=target][value=spa]")
        await page.click("#submit")
        banner = page.locator("#error:not([hidden])")
        await banner.wait_for(timeout=30_000)
        assert (await banner.text_content() or "").startswith("The upload was refused: ")
        assert await page.locator("#upload").is_hidden()
        assert await page.text_content("#upload-text") == ""
        assert await page.locator("#submit").is_enabled()

        await page.goto(f"{api}/#job={job_id}")
        await page.reload()
        status = page.locator("#job-status")
        await status.filter(has_text="queued").wait_for(timeout=10_000)
        assert await page.locator("#error").is_hidden()
        assert await page.locator("#retry-job").is_hidden()
        await page.click("#cancel-job")
        await status.filter(has_text="cancelled").wait_for(timeout=10_000)
        assert await page.locator("#cancel-job").is_hidden()
        async with page.expect_response(
            lambda r: r.url.endswith(f"/jobs/{job_id}/retry") and r.request.method == "POST"
        ) as retried:
            await page.click("#retry-job")
        assert (await retried.value).status == 202
        # The page shows the retried job (queued, or already further: the session's worker takes
        # it). Status and button are read in one go: the page renders both together.
        await status.filter(has_not_text="cancelled").wait_for(timeout=10_000)
        shown, retry_hidden = await page.evaluate(
            "() => [document.getElementById('job-status').textContent,"
            " document.getElementById('retry-job').hidden]"
        )
        assert retry_hidden == (shown not in ("failed", "cancelled")), shown
        assert errors == []


async def _subtitles_only_job(pipeline: Pipeline, owner: uuid.UUID, clip: Path) -> uuid.UUID:
    job_id = uuid.uuid4()
    input_key = JobKeys(job_id).input
    await pipeline.store.put_file(input_key, clip, "application/octet-stream")
    job_id = await create_job(
        pipeline.pool, owner, ["spa"], input_key=input_key, options={"subtitles_only": True}
    )
    message = JobMessage(job_id)
    await pipeline.nc.jetstream().publish(
        pipeline.settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )
    job = await wait_terminal(pipeline.pool, job_id, limit=300)
    assert job["status"] == "succeeded", job["error_message"]
    return job_id


async def test_web_page_shows_a_subtitles_only_job_without_a_player(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    key = await create_key(pipeline.pool, "web-subtitles")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=6.0, with_video=False)
    job_id = await _subtitles_only_job(pipeline, key.id, clip.path)
    async with chromium_page() as (page, errors):
        await page.goto(api + "/")
        await page.fill("#api-key", key.key)
        await page.click("#key-form button")
        await page.locator("#key-state", has_text="key accepted").wait_for(timeout=10_000)
        await page.goto(f"{api}/#job={job_id}")
        await page.reload()
        await page.locator("#result:not([hidden])").wait_for(timeout=30_000)
        await page.locator("#downloads a").first.wait_for(timeout=10_000)
        assert await page.locator("#players").is_hidden()
        assert await page.locator("#no-media").is_visible()
        assert await page.get_attribute("#dubbed", "src") is None
        kinds = await page.locator("#downloads a").evaluate_all(
            "links => links.map(l => l.dataset.kind)"
        )
        assert "transcript" in kinds and any("srt" in k or "vtt" in k for k in kinds), kinds
        assert not any(k in ("dubbed_audio", "dubbed_video") for k in kinds), kinds
        assert await page.locator("#transcript tbody tr").count() > 0
        assert await page.locator("#retry-job").is_hidden()
        assert await page.locator("#cancel-job").is_hidden()
        assert errors == []


async def _review_job(pipeline: Pipeline, owner: uuid.UUID, clip: Path) -> uuid.UUID:
    """A job with ``review: true``, once its language waits in review."""
    job_id = uuid.uuid4()
    input_key = JobKeys(job_id).input
    await pipeline.store.put_file(input_key, clip, "application/octet-stream")
    job_id = await create_job(
        pipeline.pool, owner, ["spa"], input_key=input_key, options={"review": True}
    )
    message = JobMessage(job_id)
    await pipeline.nc.jetstream().publish(
        pipeline.settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )
    async with asyncio.timeout(300):
        while True:
            status = await pipeline.pool.fetchval(
                "SELECT status FROM job_targets WHERE job_id = $1 AND language = 'spa'", job_id
            )
            assert status not in ("failed", "cancelled"), status
            if status == "review":
                return job_id
            await asyncio.sleep(0.5)


async def test_web_page_gives_a_review_language_a_tab_and_plays_the_original_of_any_job(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    key = await create_key(pipeline.pool, "web-review-tab")
    stranger = await create_key(pipeline.pool, "web-stranger")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=6.0, with_video=False)
    job_id = await _review_job(pipeline, key.id, clip.path)
    headers = {"Authorization": f"Bearer {key.key}"}
    async with httpx.AsyncClient(base_url=f"{api}/api/v1", headers=headers) as client:
        segments = (await client.get(f"/jobs/{job_id}/languages/spa/segments")).json()["segments"]
        # The original audio's route: a redirect to a download link, owned like every job route.
        moved = await client.get(f"/jobs/{job_id}/original")
        assert moved.status_code == 302, moved.text
        got = await client.get(api + moved.headers["location"])  # relative: no public URL set
        assert got.status_code == 200 and got.content[:4] == b"RIFF", got.text[:200]
        assert got.headers["content-type"] == "audio/wav"  # the audio as extract_audio decoded it
        link = (await client.get(f"/jobs/{job_id}/original", params={"redirect": "false"})).json()
        assert link["url"].startswith("/api/v1/downloads/") and link["expires_in_seconds"] > 0
        other = {"Authorization": f"Bearer {stranger.key}"}
        refused = await client.get(f"/jobs/{job_id}/original", headers=other)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "job_not_found"
    async with chromium_page() as (page, errors):
        # A browser that never uploaded the file: the original comes from the server.
        await page.goto(api + "/")
        await page.fill("#api-key", key.key)
        await page.click("#key-form button")
        await page.locator("#key-state", has_text="key accepted").wait_for(timeout=10_000)
        await page.goto(f"{api}/#job={job_id}")
        await page.reload()
        tab = page.locator("#result-tabs button[data-language='spa']")
        await tab.wait_for(timeout=30_000)
        assert await tab.get_attribute("data-status") == "review"
        assert (await tab.text_content() or "").endswith("(review)")
        await page.locator("#review:not([hidden])").wait_for(timeout=30_000)
        assert await page.locator("#review-table tbody tr").count() == len(segments)
        assert await page.locator("#review-waiting").is_visible()
        assert await page.locator("#dubbed-figure").is_hidden()
        assert await page.text_content("#render") == "Approve and render"
        source = await page.get_attribute("#original", "src") or ""
        assert source.startswith("/api/v1/downloads/"), source  # not a blob: URL

        first = segments[0]
        await page.locator(f"#review-table tr[data-id='{first['id']}'] .play-original").click()
        await page.wait_for_function(
            "start => { const m = document.getElementById('original');"
            " return m.readyState >= 2 && m.currentTime >= start; }",
            arg=first["start"],
            timeout=30_000,
        )
        assert await page.evaluate("document.getElementById('original').error") is None

        # A voice per speaker: the language's voices, the cast's selected; a choice is saved.
        speaker = first["speaker"]
        select = page.locator(f"#review-voices select[data-speaker='{speaker}']")
        assert await select.input_value() == "mms_tts_spa"
        offered = await select.locator("option").evaluate_all("o => o.map(x => x.value)")
        assert "mms_tts_spa:female_high" in offered and len(offered) == 5, offered
        await select.select_option("mms_tts_spa:female_high")
        async with page.expect_response(lambda r: r.request.method == "PATCH") as saved:
            await page.click("#save-edits")
        assert (await saved.value).status == 200
        async with httpx.AsyncClient(base_url=f"{api}/api/v1", headers=headers) as client:
            read = await client.get(f"/jobs/{job_id}/languages/spa/segments")
        assert read.json()["voices"][speaker] == "mms_tts_spa:female_high"

        await page.click("#render")  # approves the segments: version 1
        done = page.locator("#result-tabs button[data-language='spa'][data-status='succeeded']")
        await done.wait_for(timeout=300_000)
        await page.locator("#dubbed-figure:not([hidden])").wait_for(timeout=30_000)
        assert await page.locator("#review-waiting").is_hidden()
        assert await page.text_content("#render") == "Re-render"
        assert await select.input_value() == "mms_tts_spa:female_high"  # kept by the render
        assert errors == []
