"""The main job as a person runs it: ``polydub stack up`` (six servers), ``polydub sample make``,
``polydub dub`` with its downloads, the jobs and keys commands, and the web page in Chromium.

The stack is started through the CLI in a temporary folder on free ports and stopped at the
end, leaving nothing running. Its Triton serves the session's tiny models (exported once by the
``tiny_models`` fixture), so no export is repeated here; the export-when-empty path is covered
by tests/unit/stack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from polydub.media.mux import stream_md5
from polydub.media.probe import probe
from polydub.orchestrator.subtitles import parse_srt, parse_vtt
from polydub.settings import Settings
from tests.conftest import free_port, scratch_dir
from tests.e2e.harness import chromium_page

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
PORTS = (
    "POSTGRES_PORT",
    "NATS_PORT",
    "NATS_MONITOR_PORT",
    "S3_PORT",
    "TRITON_HTTP_PORT",
    "TRITON_GRPC_PORT",
    "TRITON_METRICS_PORT",
    "API_PORT",
    "WORKER_METRICS_PORT",
)
KINDS = {  # the files of one language, as downloaded
    "sample.{lang}.mp4",
    "sample.{lang}.m4a",
    "sample.{lang}.srt",
    "sample.{lang}.vtt",
    "sample.{lang}.source.srt",
    "sample.{lang}.source.vtt",
    "sample.{lang}.transcript.json",
    "sample.{lang}.quality.json",
}


@dataclass(frozen=True)
class AppStack:
    root: Path
    env: dict[str, str]
    url: str
    sample: Path

    def polydub(
        self, *args: str, cwd: Path | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "polydub.cli", *args],
            env=self.env,
            cwd=cwd or self.root,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )


def _processes_under(path: Path) -> list[str]:
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if str(path) in line and " ps " not in line]


@pytest.fixture(scope="module")
def app_stack(tiny_models: list[str], stack_settings: Settings) -> Iterator[AppStack]:
    # Under /tmp itself: PostgreSQL runs unprivileged under root and must traverse the path.
    root = scratch_dir("polydub-app-")
    root.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYDUB_")}
    env.update(
        {
            "POLYDUB_STACK_DIR": str(root / "stack"),
            "POLYDUB_MODEL_REPOSITORY": str(stack_settings.model_repository),
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "200",
        }
    )
    env.update({f"POLYDUB_{name}": str(free_port()) for name in PORTS})
    stack = AppStack(root, env, f"http://127.0.0.1:{env['POLYDUB_API_PORT']}", root / "sample.mp4")
    try:
        up = stack.polydub("stack", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        made = stack.polydub("sample", "make", str(stack.sample))
        assert made.returncode == 0, made.stdout + made.stderr
        yield stack
    finally:
        down = stack.polydub("stack", "down")
    assert down.returncode == 0, down.stderr
    assert _processes_under(root) == []
    shutil.rmtree(root, ignore_errors=True)


def test_stack_up_runs_six_servers_with_the_models_loaded(app_stack: AppStack) -> None:
    status = app_stack.polydub("stack", "status")
    assert status.returncode == 0, status.stdout
    for server in ("postgres", "nats", "s3", "triton", "api", "worker"):
        assert re.search(rf"│ {server}\s+│ healthy ", status.stdout), status.stdout
    models = app_stack.polydub("models", "list")
    assert models.returncode == 0, models.stderr
    rows = {line.split("│")[1].strip(): line for line in models.stdout.splitlines() if "│" in line}
    for name, license_ in {
        "silero_vad": "MIT",
        "speaker_embedding": "CC-BY-4.0",
        "whisper": "MIT",
        "nllb": "CC-BY-NC-4.0",
        "mms_tts_spa": "CC-BY-NC-4.0",
    }.items():
        assert f"│ {license_} " in rows[name] and "READY" in rows[name], rows.get(name)
    sample = probe(app_stack.sample)
    assert sample.has_video and abs(sample.duration - 12.0) < 0.1
    assert 100_000 < app_stack.sample.stat().st_size < 600_000


def test_dub_downloads_every_output_per_language(app_stack: AppStack, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = app_stack.polydub(
        "dub", str(app_stack.sample), "--to", "spa,fra", "--speakers", "2", "--out", str(out)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = re.search(r"job ([0-9a-f-]{36}) on the local stack", result.stdout)
    assert job_id is not None, result.stdout
    for stage in ("validate", "diarize", "transcribe", "gender"):  # the per-stage bars
        assert re.search(rf"{stage}\s+━+ done", result.stdout), result.stdout

    source_video = stream_md5(app_stack.sample)
    source = probe(app_stack.sample)
    for lang in ("spa", "fra"):
        folder = out / lang
        assert {p.name for p in folder.iterdir()} == {k.format(lang=lang) for k in KINDS}
        video = folder / f"sample.{lang}.mp4"
        assert f"{lang}: {video}" in result.stdout  # where the outputs are
        dubbed = probe(video)
        assert dubbed.has_video and abs(dubbed.audio_duration - source.audio_duration) <= 0.05
        assert stream_md5(video) == source_video  # the video stream is copied, bit for bit
        srt = (folder / f"sample.{lang}.srt").read_text()
        assert len(parse_srt(srt)) == len(parse_vtt((folder / f"sample.{lang}.vtt").read_text()))
        assert len(parse_srt((folder / f"sample.{lang}.source.srt").read_text())) >= 1
        transcript = json.loads((folder / f"sample.{lang}.transcript.json").read_text())
        assert transcript["target_language"] == lang
        assert {s["speaker"] for s in transcript["speakers"]} == {"SPEAKER_00", "SPEAKER_01"}
        report = json.loads((folder / f"sample.{lang}.quality.json").read_text())
        assert report["stages"]["diarize"]["speakers_found"] == 2

    key_file = app_stack.root / "stack" / "cli" / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text()
    listed = app_stack.polydub("jobs", "list")
    assert listed.returncode == 0 and job_id[1] in listed.stdout and "succeeded" in listed.stdout
    again = app_stack.polydub("jobs", "show", job_id[1], "--json")
    assert json.loads(again.stdout)["status"] == "succeeded"
    assert key_file.read_text() == key  # the CLI's local key is reused, not replaced
    fetched = app_stack.polydub("jobs", "download", job_id[1], "--out", str(tmp_path / "again"))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    for lang in ("spa", "fra"):
        clip = f"{lang}/sample.{lang}.mp4"
        assert (tmp_path / "again" / clip).read_bytes() == (out / clip).read_bytes()


def test_remote_key_jobs_commands_and_a_cancelled_job(app_stack: AppStack, tmp_path: Path) -> None:
    created = app_stack.polydub("keys", "create", "--name", "remote-user")
    assert created.returncode == 0, created.stderr
    key = next(line for line in created.stdout.splitlines() if line.startswith("pd_"))
    remote = ["--api", app_stack.url, "--key", key]

    refused = app_stack.polydub("dub", str(app_stack.sample), "--to", "xxx", *remote)
    assert refused.returncode == 2 and "unsupported_language" in refused.stdout

    # No MMS-TTS voice for Italian is served: refused before anything is uploaded, no job made.
    unserved = app_stack.polydub("dub", str(app_stack.sample), "--to", "ita", *remote)
    assert unserved.returncode == 2 and "language_not_served" in unserved.stdout
    assert "served: deu, eng, fra, spa" in unserved.stdout
    none = app_stack.polydub("jobs", "list", *remote)
    assert none.returncode == 0 and not re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", none.stdout)

    # A job cancelled while it runs: `dub` follows it to the end, says so and exits 1.
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polydub.cli",
            "dub",
            str(app_stack.sample),
            "--to",
            "spa",
            "--out",
            str(tmp_path),
            *remote,
        ],
        env=app_stack.env,
        cwd=app_stack.root,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    ids: list[str] = []
    deadline = time.monotonic() + 120
    while not ids and time.monotonic() < deadline:
        listed = app_stack.polydub("jobs", "list", *remote)
        ids = re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", listed.stdout)
        time.sleep(0.5)
    assert ids, "the job never appeared"
    cancelled = app_stack.polydub("jobs", "cancel", ids[0][:8], *remote)  # a unique prefix
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    stdout, stderr = follow.communicate(timeout=240)
    assert follow.returncode == 1, stdout + stderr
    assert "job cancelled" in stdout and not list(tmp_path.iterdir())
    job_id = re.search(rf"job ([0-9a-f-]{{36}}) on {re.escape(app_stack.url)}", stdout)
    assert job_id is not None and job_id[1] == ids[0]

    listed = app_stack.polydub("jobs", "list", *remote)
    assert re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", listed.stdout) == [job_id[1]]  # only this key's
    shown = app_stack.polydub("jobs", "show", job_id[1], *remote)
    assert "cancelled" in shown.stdout and "spa" in shown.stdout
    again = app_stack.polydub("jobs", "cancel", job_id[1], *remote)  # idempotent
    assert again.returncode == 0 and f"{job_id[1]}: cancelled" in again.stdout

    prefix = key.split("_")[1]
    assert app_stack.polydub("keys", "revoke", prefix).returncode == 0
    after = app_stack.polydub("jobs", "list", *remote)
    assert after.returncode == 1 and "api_key_revoked" in after.stdout


async def test_web_page_uploads_follows_and_plays(app_stack: AppStack) -> None:
    key = (app_stack.root / "stack" / "cli" / "api-key").read_text().strip()
    async with chromium_page(viewport={"width": 1280, "height": 1000}) as (page, errors):
        await page.goto(app_stack.url + "/")
        await page.fill("#api-key", key)
        await page.click("#key-form button")
        await page.check("input[name=target][value=spa]")
        await page.check("input[name=target][value=fra]")
        await page.fill("#speakers", "2")
        await page.set_input_files("#file", str(app_stack.sample))
        await page.click("#submit")
        await page.wait_for_selector("#result:not([hidden])", timeout=180_000)

        assert await page.text_content("#job-status") == "succeeded"
        assert await page.text_content("#upload-text") == "uploaded"
        stages = await page.locator("#stages li.done").all_text_contents()
        assert stages[:4] == ["validate", "extract_audio", "separate", "diarize"]
        languages = await page.locator("#languages .progress-row").all_text_contents()
        assert [row.endswith("succeeded") for row in languages] == [True, True]

        players = """() => ['original', 'dubbed'].map(id => {
            const v = document.getElementById(id);
            return [v.readyState, v.duration, v.videoWidth];
        })"""
        # Functions, not expressions: the page's CSP forbids eval, which expressions need.
        await page.wait_for_function(
            "() => document.getElementById('dubbed').readyState >= 1"
            " && document.getElementById('original').readyState >= 1"
        )
        (original, dubbed) = await page.evaluate(players)
        assert original[2] == dubbed[2] == 320
        assert abs(original[1] - 12.0) < 0.2 and abs(dubbed[1] - 12.0) < 0.2
        assert (await page.text_content("#dubbed-caption") or "").startswith("dubbed: ")

        links = page.locator("#downloads a")
        names = await links.all_text_contents()
        shown = await page.locator("#result-tabs button.active").get_attribute("data-language")
        assert set(names) == {k.format(lang=shown) for k in KINDS}
        video_url = await page.locator("#downloads a[data-kind=dubbed_video]").get_attribute("href")
        assert video_url is not None
        # Served through the API (a relative link): what the browser follows, with no key.
        async with httpx.AsyncClient(base_url=app_stack.url) as http:
            download = await http.get(video_url)
        assert download.status_code == 200 and download.content[4:8] == b"ftyp"
        assert "attachment" in download.headers["content-disposition"]

        rows = page.locator("#transcript tbody tr")
        assert await rows.count() >= 1
        speakers = set(await page.locator("#transcript td.speaker").all_text_contents())
        assert speakers <= {"SPEAKER_00", "SPEAKER_01"} and speakers
        heads = [
            await page.text_content("#source-head"),
            await page.text_content("#target-head"),
        ]
        assert heads[1] in {"Spanish", "French"}

        await page.click("#result-tabs button:not(.active)")
        await page.wait_for_function(
            "() => document.querySelector('#dubbed-caption').textContent !== 'dubbed: ' + "
            f"{json.dumps(heads[1])}"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
    assert errors == []
    assert (ARTIFACTS / "web-page.png").stat().st_size > 10_000
