"""A short headless Locust run in CI: the API (``polydub api serve``) and two workers
(``polydub worker run``) as subprocesses on the session's stack with the tiny models, clients
submitting, polling, following events and downloading for 20 s, a burst of submissions, then
every submitted job must reach a terminal state. Any failed request fails the test.

The longer, documented runs are ``python -m loadtests.run`` (docs/reliability.md).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.harness import Deployment
from loadtests.run import LoadOptions, run_locust
from polydub.settings import Settings
from polydub.stack import Stack
from polydub.stack.isolated import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def deploy(
    services: Stack, triton_server: Stack, tiny_models: list[str], stack_settings: Settings,
    tmp_path: Path,
) -> Iterator[Deployment]:  # fmt: skip
    stream = f"LOAD_{uuid.uuid4().hex[:6]}"
    update: dict[str, object] = {
        "jobs_stream": stream,
        "jobs_subject": f"{stream.lower()}.jobs",
        "api_port": free_port(),
        "api_outbox_poll_seconds": 0.2,
    }
    if "worker_metrics_port" in Settings.model_fields:
        update["worker_metrics_port"] = 0
    deployment = Deployment(stack_settings.model_copy(update=update), tmp_path / "logs")
    try:
        yield deployment
    finally:
        deployment.stop_procs()


def test_short_headless_run_has_no_errors_and_loses_no_job(
    deploy: Deployment, tmp_path: Path
) -> None:
    api, workers = deploy.start_app(workers=2)
    options = LoadOptions(
        users=9,
        spawn_rate=9,
        duration=20,
        keys=3,  # Pollers share the Clients' keys: they poll those jobs, submit none
        poll_pace=0.1,
        dub_fraction=0.0,
        burst_size=3,
        burst_every=60,  # one burst, at the start
        drain_timeout=120,
    )
    result = run_locust(
        deploy,
        options,
        tmp_path / "load",
        {"api": [api.pid], "workers": [w.pid for w in workers]},
    )
    print(result.table())
    (tmp_path / "result.json").write_text(json.dumps(result.to_json(), default=str))
    assert result.failures == [], result.failures
    assert result.locust_exit == 0, (tmp_path / "load" / "locust.out").read_text()[-3000:]
    status = result.endpoint("GET /jobs/{id}")
    assert status.requests >= 300 and status.failures == 0
    assert result.endpoint("POST /jobs").requests >= 3
    assert result.endpoint("POST /jobs (burst)").requests == 3
    assert result.jobs_submitted >= 6
    assert result.jobs_lost == [], result.jobs_by_status
    assert result.jobs_by_status.get("succeeded") == result.jobs_submitted, result.jobs_by_status
    for worker in workers:
        assert worker.alive(), worker.log_text()[-3000:]
    assert api.alive()
