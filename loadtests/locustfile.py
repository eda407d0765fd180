"""API clients at volume: submit small jobs, poll status, follow events, download outputs.

Run it through ``python -m loadtests.run`` (which brings up a whole local deployment and passes
the settings below), or against any polydub API with one key (``POLYDUB_API_KEY``, as the CLI)::

    POLYDUB_API_KEY=pd_... \
        locust -f loadtests/locustfile.py --headless -u 40 -r 10 -t 60s --host http://127.0.0.1:8080

Options (each also an environment variable): ``--polydub-keys`` (``POLYDUB_LOAD_KEYS``) a JSON
file listing several keys, spread over the users; ``--polydub-key`` (``POLYDUB_API_KEY``) one key
when there is no such file; ``--polydub-clip`` (``POLYDUB_LOAD_CLIP``) the media each job uploads,
by default a generated 3 s WAV tone.

Users:
- ``Client``: a person's integration. Submits a job now and then (a few-second clip: most ask for
  subtitles only, ``POLYDUB_LOAD_DUB_FRACTION`` ask for a full dub), polls its jobs' status, lists
  them, follows a job's event stream (SSE) for a few seconds, and downloads an output through its
  presigned link. Think times between actions.
- ``Poller``: a dashboard that polls the status of its jobs at a fixed pace
  (``POLYDUB_LOAD_POLL_PACE`` seconds per request per user): the status-throughput measurement.
- ``Burster`` (one user): every ``POLYDUB_LOAD_BURST_EVERY`` seconds submits
  ``POLYDUB_LOAD_BURST_SIZE`` jobs at once.

Every answer other than the expected status is a failure (a 429 too: the keys' limits are
raised for the run). The ids of all accepted jobs are written to ``POLYDUB_LOAD_JOBS_OUT`` at the
end so the caller can check that every one reaches a terminal state.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import random
import struct
import sys
import time
import uuid
import wave
from collections import defaultdict
from pathlib import Path
from typing import Any

import gevent
import requests
from gevent.pool import Group
from locust import FastHttpUser, between, constant, constant_pacing, events, task

from polydub.jobs import TERMINAL

# Filled in by _configure from the command line (or the environment) once locust has parsed it.
KEYS: list[str] = []
CLIP = b""
TARGET = os.environ.get("POLYDUB_LOAD_TARGET", "spa")
DUB_FRACTION = float(os.environ.get("POLYDUB_LOAD_DUB_FRACTION", "0.2"))
POLL_PACE = float(os.environ.get("POLYDUB_LOAD_POLL_PACE", "0.2"))
BURST_SIZE = int(os.environ.get("POLYDUB_LOAD_BURST_SIZE", "10"))
BURST_EVERY = float(os.environ.get("POLYDUB_LOAD_BURST_EVERY", "15"))
SSE_SECONDS = float(os.environ.get("POLYDUB_LOAD_SSE_SECONDS", "3"))
JOBS_OUT = os.environ.get("POLYDUB_LOAD_JOBS_OUT", "")

_key_turn = itertools.count()
# key -> ids of the jobs submitted with it (a key sees only its own jobs: others answer 404)
JOBS: defaultdict[str, list[str]] = defaultdict(list)
FINISHED: defaultdict[str, list[str]] = defaultdict(list)  # succeeded, with outputs
SEEDED: set[str] = set()  # keys a Poller has submitted a job with


class LoadConfigError(Exception):
    """The run cannot start: no key, or a file that cannot be read."""


def tone_wav(seconds: float = 3.0, rate: int = 16000) -> bytes:
    """A short sine tone as a WAV file: media every polydub API accepts, made without ffmpeg."""
    samples = (
        round(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(struct.pack(f"<{int(seconds * rate)}h", *samples))
    return buffer.getvalue()


def load_config(keys_file: str, key: str, clip: str) -> tuple[list[str], bytes]:
    """The keys and the clip of a run, from the options (see the module docstring)."""
    if keys_file:
        try:
            keys = json.loads(Path(keys_file).read_text())
        except (OSError, ValueError) as exc:
            raise LoadConfigError(f"--polydub-keys {keys_file}: {exc}") from exc
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise LoadConfigError(f"--polydub-keys {keys_file}: not a JSON list of API keys")
    elif key:
        keys = [key]
    else:
        raise LoadConfigError(
            "no API key: set POLYDUB_API_KEY (or --polydub-key KEY), or --polydub-keys FILE"
            " (POLYDUB_LOAD_KEYS) with a JSON list of keys; 'polydub keys create' makes one"
        )
    if not clip:
        return keys, tone_wav()
    try:
        return keys, Path(clip).read_bytes()
    except OSError as exc:
        raise LoadConfigError(f"--polydub-clip {clip}: {exc}") from exc


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    group = parser.add_argument_group("polydub")
    group.add_argument(
        "--polydub-keys",
        env_var="POLYDUB_LOAD_KEYS",
        default="",
        help="a JSON file listing API keys, spread over the users",
    )
    group.add_argument(
        "--polydub-key",
        env_var="POLYDUB_API_KEY",
        default="",
        help="one API key, when there is no --polydub-keys",
    )
    group.add_argument(
        "--polydub-clip",
        env_var="POLYDUB_LOAD_CLIP",
        default="",
        help="the media each job uploads (default: a generated 3 s WAV tone)",
    )


@events.init.add_listener  # type: ignore[untyped-decorator]
def _configure(environment: Any, **_: Any) -> None:
    global CLIP
    options = environment.parsed_options
    if options is None:  # imported as a library, not run by locust
        return
    try:
        keys, CLIP = load_config(options.polydub_keys, options.polydub_key, options.polydub_clip)
    except LoadConfigError as exc:
        # SystemExit, not an exception: locust logs and ignores those raised by a listener.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    KEYS[:] = keys


def multipart(
    fields: dict[str, str], payload: bytes, filename: str = "clip.mp4"
) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = b"".join(parts) + head + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class PolydubUser(FastHttpUser):
    abstract = True
    connection_timeout = 30.0
    network_timeout = 60.0

    def on_start(self) -> None:
        self.key = KEYS[next(_key_turn) % len(KEYS)]
        self.auth = {"Authorization": f"Bearer {self.key}"}

    def submit(self, name: str = "POST /jobs") -> str | None:
        fields = {"target_languages": TARGET, "source_language": "eng"}
        filename = "clip.wav" if CLIP[:4] == b"RIFF" else "clip.mp4"
        if random.random() >= DUB_FRACTION:
            fields["subtitles_only"] = "true"
        body, content_type = multipart(fields, CLIP, filename)
        with self.client.post(
            "/api/v1/jobs",
            data=body,  # type: ignore[arg-type]  # bytes are sent as they are
            headers={**self.auth, "Content-Type": content_type},
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
                return None
            job_id: str = response.json()["id"]
        JOBS[self.key].append(job_id)
        return job_id

    def some_job(self) -> str | None:
        jobs = JOBS[self.key]
        return random.choice(jobs[-50:]) if jobs else None

    def status(self) -> dict[str, Any] | None:
        job_id = self.some_job()
        if job_id is None:
            return None
        with self.client.get(
            f"/api/v1/jobs/{job_id}",
            headers=self.auth,
            name="GET /jobs/{id}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
                return None
            job: dict[str, Any] = response.json()
        if job["status"] == "succeeded" and job_id not in FINISHED[self.key]:
            FINISHED[self.key].append(job_id)
        return job


class Client(PolydubUser):
    weight = 3
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        super().on_start()
        self.submit()

    @task(1)
    def submit_job(self) -> None:
        self.submit()

    @task(10)
    def poll_status(self) -> None:
        self.status()

    @task(2)
    def list_jobs(self) -> None:
        with self.client.get(
            "/api/v1/jobs?limit=20", headers=self.auth, name="GET /jobs", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")

    @task(1)
    def follow_events(self) -> None:
        """SSE for up to SSE_SECONDS: the replay must start at once; ends early at a terminal
        state. Recorded as the time to the first event (the stream's own length is the job's)."""
        job_id = self.some_job()
        if job_id is None:
            return
        url = f"{self.host}/api/v1/jobs/{job_id}/events"
        started = time.perf_counter()
        first: float | None = None
        error: Exception | None = None
        count = 0
        try:
            with requests.get(url, headers=self.auth, stream=True, timeout=30) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
                for raw in response.iter_lines():
                    line = raw.decode("utf-8", "replace")
                    if not line or not line.startswith("data:"):
                        if time.perf_counter() - started > SSE_SECONDS:
                            break
                        continue
                    count += 1
                    if first is None:
                        first = time.perf_counter()
                    event = json.loads(line[5:])
                    if event.get("type") == "state" and event.get("status") in TERMINAL:
                        break
                    if time.perf_counter() - started > SSE_SECONDS:
                        break
            if count == 0:
                raise RuntimeError("no event within the stream")
        except Exception as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="SSE",
            name="GET /jobs/{id}/events (first event)",
            response_time=((first or time.perf_counter()) - started) * 1000,
            response_length=count,
            exception=error,
            context={},
        )

    @task(2)
    def download(self) -> None:
        done = FINISHED[self.key]
        if not done:
            self.status()  # keeps looking for finished jobs
            return
        job_id = random.choice(done[-20:])
        with self.client.get(
            f"/api/v1/jobs/{job_id}/outputs/{TARGET}",
            headers=self.auth,
            name="GET /jobs/{id}/outputs/{lang}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
                return
            files = {f["kind"]: f for f in response.json()["files"]}
        link = files.get("subtitles_srt") or next(iter(files.values()))
        with self.client.get(link["url"], name="GET S3 presigned link", catch_response=True) as got:
            if got.status_code != 200 or len(got.content or b"") != link["size_bytes"]:
                got.failure(f"{got.status_code}, {len(got.content or b'')} bytes")


class Poller(PolydubUser):
    """A status dashboard: one request every POLL_PACE seconds per user."""

    weight = 1
    wait_time = constant_pacing(POLL_PACE)

    def on_start(self) -> None:
        super().on_start()
        if self.key not in SEEDED:  # one job per key to poll, not one per user
            SEEDED.add(self.key)
            self.submit()
        # Dashboards poll at independent moments. Users start at the spawn rate, and with a
        # pace that is a multiple of its period (10 users/s, 0.2 s) they would keep polling in
        # a few phase-locked waves of tens of requests at once.
        gevent.sleep(random.uniform(0.0, POLL_PACE))

    @task
    def poll(self) -> None:
        self.status()


class Burster(PolydubUser):
    """A batch client: bursts of submissions at once."""

    fixed_count = 1
    wait_time = constant(BURST_EVERY)

    @task
    def burst(self) -> None:
        group = Group()
        for _ in range(BURST_SIZE):
            group.spawn(self.submit, "POST /jobs (burst)")
        group.join()


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _write_jobs(**_: Any) -> None:
    if JOBS_OUT:
        gevent.sleep(0)
        ids = sorted({job for jobs in JOBS.values() for job in jobs})
        Path(JOBS_OUT).write_text(json.dumps(ids))
