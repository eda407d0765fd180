"""One real job, API to Triton, observed the way an operator would: its trace over OTLP and the
Prometheus series of both tiers.

The API runs in this process (service polydub-api) and the worker in a child process
(``polydub worker run``, service polydub-worker): the trace context really crosses a process
boundary, through the outbox row and the NATS message headers. Both export to an OTLP/gRPC
receiver on loopback; the test then checks the parent/child chain of the job's one trace and
scrapes ``/metrics`` of the API and of the worker's metrics server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polydub.api.app import create_app
from polydub.api.auth import create_key
from polydub.orchestrator.stages import STAGES
from polydub.settings import Settings
from tests.conftest import free_port
from tests.integration.api.helpers import Served
from tests.media import make_two_speaker_clip
from tests.otlp import OtlpReceiver, Received

pytestmark = pytest.mark.e2e

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP SpanKind values
ERROR = 2  # OTLP status code
JOB_STAGES = [s.name for s in STAGES if s.scope == "job"]
TARGET_STAGES = [s.name for s in STAGES if s.scope == "target"]


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as the POLYDUB_* environment a child process reads them from."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"POLYDUB_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@contextlib.asynccontextmanager
async def worker_process(
    settings: Settings, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        **settings_env(settings),
        "POLYDUB_LOG_JSON": "false",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export spans as they end, not every 5 s
    }
    command = ["-m", "polydub.cli", "worker", "run", "--concurrency", "1"]
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *command, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)  # drains, flushes its spans, exits
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def scrape(url: str, within: float = 30.0) -> dict[tuple[str, frozenset[Any]], float]:
    """``/metrics`` as {(sample name, labels): value}; retried while the server starts."""
    async with httpx.AsyncClient(timeout=5.0) as client, asyncio.timeout(within):
        while True:
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(metrics: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), -1.0)


async def wait_terminal(
    client: httpx.AsyncClient, job_id: str, worker: asyncio.subprocess.Process, log: Path
) -> dict[str, Any]:
    async with asyncio.timeout(120):
        while True:
            if worker.returncode is not None:
                tail = (await asyncio.to_thread(log.read_text))[-3000:]
                raise AssertionError(f"the worker exited: {tail}")
            job: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            await asyncio.sleep(0.3)


def ancestors(span: Received, by_id: dict[str, Received]) -> list[Received]:
    chain = []
    while span.parent_id:
        span = by_id[span.parent_id]  # KeyError: a parent never arrived, the chain is broken
        chain.append(span)
    return chain


Metrics = dict[tuple[str, frozenset[Any]], float]


@dataclass(frozen=True)
class Observed:
    settings: Settings
    job_id: str
    spans: list[Received]
    worker_metrics: Metrics
    api_before: Metrics  # this process's API series also count earlier tests' requests
    api_metrics: Metrics


@pytest.fixture(scope="module")
async def observed(
    services: object,
    tiny_models: list[str],
    db_pool: asyncpg.Pool,
    stack_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Observed:
    """One job submitted over HTTP and run by a worker process, both exporting to a receiver."""
    folder = tmp_path_factory.mktemp("telemetry")
    clip = make_two_speaker_clip(folder / "talk.mp4", seconds=6.0)
    tag = uuid.uuid4().hex[:6]
    with OtlpReceiver() as receiver:
        (folder / "spool").mkdir()
        settings = stack_settings.model_copy(
            update={
                "jobs_stream": f"OTEL_{tag}",
                "jobs_subject": f"otel.{tag}.jobs",
                "otel_endpoint": receiver.endpoint,
                "worker_metrics_host": "127.0.0.1",
                "worker_metrics_port": free_port(),
                "worker_metrics_poll_seconds": 0.5,
                "api_outbox_poll_seconds": 0.1,
                "api_tmp_dir": folder / "spool",
                "retention_interval_seconds": 3600.0,
            }
        )
        key = await create_key(db_pool, "telemetry")
        api = Served(create_app(settings))
        await api.start()
        api_before = await scrape(f"{api.url}/metrics")
        worker_metrics_url = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
        log = folder / "worker.log"
        try:
            async with (
                worker_process(settings, log) as worker,
                httpx.AsyncClient(
                    base_url=api.url, headers={"Authorization": f"Bearer {key.key}"}, timeout=30
                ) as client,
            ):
                response = await client.post(
                    "/api/v1/jobs",
                    data={"source_language": "eng", "target_languages": "spa"},
                    files={"file": ("talk.mp4", clip.path.read_bytes(), "video/mp4")},
                )
                assert response.status_code == 202, response.text
                job_id = response.json()["id"]
                job = await wait_terminal(client, job_id, worker, log)
                assert job["status"] == "succeeded", (job, log.read_text()[-3000:])
                await asyncio.sleep(1.0)  # a queue-depth poll after the ack
                worker_metrics = await scrape(worker_metrics_url)
            api_metrics = await scrape(f"{api.url}/metrics")
        finally:
            await api.stop()  # flushes the API's spans
        spans = await receiver.wait_for(
            lambda got: (
                any(s.name == "job.run" for s in got)
                and sum(s.name.startswith("stage.") for s in got) >= len(STAGES)
            )
        )
    return Observed(settings, job_id, spans, worker_metrics, api_before, api_metrics)


def infer_spans(observed: Observed, service: str | None = None) -> list[Received]:
    spans = [s for s in job_trace(observed) if s.name.startswith("triton.infer ")]
    return [s for s in spans if service is None or s.service == service]


def job_trace(observed: Observed) -> list[Received]:
    submit = next(
        s
        for s in observed.spans
        if s.name == "job.submit" and s.attributes["polydub.job_id"] == observed.job_id
    )
    return [s for s in observed.spans if s.trace_id == submit.trace_id]


async def test_one_trace_from_request_to_triton(observed: Observed) -> None:
    """request -> job.submit -> publish -> job.run -> one span per stage -> Triton calls."""
    job_id, settings = observed.job_id, observed.settings
    trace = job_trace(observed)
    submit = next(s for s in trace if s.name == "job.submit")
    by_id = {s.span_id: s for s in trace}
    assert {s.service for s in trace} == {"polydub-api", "polydub-worker"}
    roots = [s for s in trace if not s.parent_id]
    assert [(r.name, r.kind, r.service) for r in roots] == [
        ("POST /api/v1/jobs", SERVER, "polydub-api")
    ]
    assert roots[0].attributes["http.response.status_code"] == 202
    assert by_id[submit.parent_id] is roots[0]

    publish = [s for s in trace if s.kind == PRODUCER]
    assert [(p.name, p.parent_id) for p in publish] == [
        (f"publish {settings.jobs_subject}", submit.span_id)
    ]
    runs = [s for s in trace if s.name == "job.run"]
    assert len(runs) == 1, "one delivery"
    run = runs[0]
    assert (run.kind, run.service, run.parent_id) == (
        CONSUMER,
        "polydub-worker",
        publish[0].span_id,
    )
    assert run.attributes["polydub.job_id"] == job_id
    assert submit in ancestors(run, by_id) and roots[0] in ancestors(run, by_id)

    stages = [s for s in trace if s.name.startswith("stage.")]
    assert sorted(
        (s.attributes["polydub.stage"], s.attributes.get("polydub.language", "")) for s in stages
    ) == sorted([(name, "") for name in JOB_STAGES] + [(name, "spa") for name in TARGET_STAGES])
    for stage in stages:
        assert stage.parent_id == run.span_id and stage.status_code != ERROR
        assert run.start_ns <= stage.start_ns <= stage.end_ns <= run.end_ns

    # The API asks Triton what it serves (the manifest) to check the targets at submission.
    checks = infer_spans(observed, "polydub-api")
    assert [(by_id[c.parent_id].name, c.name) for c in checks] == [
        ("POST /api/v1/jobs", "triton.infer polydub_manifest")
    ] or not checks  # the served list is cached: a second submit within 30 s asks nothing
    infers = infer_spans(observed, "polydub-worker")
    assert infers, "the stages called Triton"
    calling = set()
    for infer in infers:
        parent = by_id[infer.parent_id]
        assert parent.name.startswith("stage."), (infer.name, parent.name)
        assert infer.kind == CLIENT and infer.status_code != ERROR
        assert infer.name == f"triton.infer {infer.attributes['polydub.triton.model']}"
        assert infer.attributes["polydub.triton.batch_size"] >= 1
        calling.add(parent.attributes["polydub.stage"])
    # Speech work before the fan-out and model work after it (synthesize calls Triton only
    # when the tiny models' noise leaves text to speak; assign_voices always probes a voice).
    assert {"diarize", "transcribe", "translate", "assign_voices"} <= calling
    # No span of this job's trace is orphaned or from another trace.
    for span in trace:
        ancestors(span, by_id)


async def test_worker_series(observed: Observed) -> None:
    settings = observed.settings
    infers = infer_spans(observed, "polydub-worker")  # the worker's metrics count its own calls
    models = {s.attributes["polydub.triton.model"] for s in infers}
    w = observed.worker_metrics
    assert sample(w, "polydub_job_transitions_total", state="running") == 1
    assert sample(w, "polydub_job_transitions_total", state="succeeded") == 1
    assert sample(w, "polydub_jobs_in_flight") == 0
    depth = sample(w, "polydub_queue_depth", stream=settings.jobs_stream, consumer="workers")
    assert depth == 0  # polled from JetStream after the ack: nothing pending
    stage_spans = {
        s.attributes["polydub.stage"]: s for s in job_trace(observed) if s.name.startswith("stage.")
    }
    for name in [*JOB_STAGES, *TARGET_STAGES]:
        count = sample(w, "polydub_stage_duration_seconds_count", stage=name, outcome="ok")
        assert count == 1, name
        total = sample(w, "polydub_stage_duration_seconds_sum", stage=name, outcome="ok")
        # The histogram timed the same block as the stage's span.
        span_seconds = (stage_spans[name].end_ns - stage_spans[name].start_ns) / 1e9
        assert 0 < total <= span_seconds + 0.01 and total > span_seconds - 0.5, name
        inf = sample(
            w, "polydub_stage_duration_seconds_bucket", stage=name, outcome="ok", le="+Inf"
        )
        assert inf == 1
    for model in models:
        calls = sample(
            w, "polydub_triton_request_duration_seconds_count", model=model, outcome="ok"
        )
        assert calls == sum(1 for s in infers if s.attributes["polydub.triton.model"] == model)
        assert sample(w, "polydub_triton_request_batch_size_count", model=model) == calls
        # Triton's own counts, polled from its statistics: at least this job's requests.
        assert sample(w, "polydub_triton_inferences_total", model=model) >= 1
        assert sample(w, "polydub_triton_executions_total", model=model) >= 1
    slowest = max(
        sample(w, "polydub_triton_request_duration_seconds_sum", model=m, outcome="ok")
        for m in models
    )
    assert 0 < slowest < 300


async def test_api_series(observed: Observed) -> None:
    def grew(name: str, **labels: str) -> float:
        before = max(sample(observed.api_before, name, **labels), 0.0)
        return sample(observed.api_metrics, name, **labels) - before

    route = {"route": "/api/v1/jobs", "method": "POST"}
    assert grew("polydub_http_requests_total", **route, status="202") == 1
    assert grew("polydub_http_request_duration_seconds_count", **route) == 1
    assert grew("polydub_http_request_duration_seconds_bucket", **route, le="+Inf") == 1
    assert grew("polydub_http_request_duration_seconds_bucket", **route, le="60.0") == 1
    assert 0 < grew("polydub_http_request_duration_seconds_sum", **route) < 60
    polls = grew(
        "polydub_http_requests_total", route="/api/v1/jobs/{job_id}", method="GET", status="200"
    )
    assert polls >= 1
    assert grew("polydub_job_transitions_total", state="queued") == 1
