"""Each process exports its own tier's metric families only (issue #15, item 7): the API's
/metrics has no (empty) worker families and the workers' none of the API's. Families are made on
first use, so each tier is checked in a fresh interpreter, as ``polydub api serve`` and
``polydub worker run`` import it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

API = {"polydub_http_requests", "polydub_http_request_duration_seconds"}
WORKER = {
    "polydub_jobs_in_flight",
    "polydub_stage_duration_seconds",
    "polydub_queue_depth",
    "polydub_triton_inferences",
    "polydub_triton_executions",
    "polydub_triton_queue_seconds",
}
ON_FIRST_USE = {  # either tier, once it records one
    "polydub_job_transitions",
    "polydub_triton_request_duration_seconds",
    "polydub_triton_request_batch_size",
    "polydub_triton_retries",
}

ENTRYPOINTS = {
    "api": "from polydub.api.app import create_served_app; create_served_app()",
    "worker": "from polydub.orchestrator.main import run_worker",
}


def families(tier: str) -> set[str]:
    """The polydub families a fresh process of ``tier`` exports before any work."""
    code = (
        "import polydub.cli\n"
        f"{ENTRYPOINTS[tier]}\n"
        "from prometheus_client import REGISTRY, generate_latest\n"
        "print(generate_latest(REGISTRY).decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return {re.sub(r"_total$", "", m) for m in re.findall(r"^# TYPE (polydub_\w+) ", out, re.M)}


def test_the_api_exports_no_worker_family() -> None:
    assert families("api") == API


def test_a_worker_exports_no_api_family() -> None:
    # stage durations appear with the first stage; queue depth and Triton's statistics are
    # polled from the start
    assert families("worker") == WORKER - {"polydub_stage_duration_seconds"}


def test_every_family_is_some_tiers() -> None:
    from polydub.telemetry import metrics

    names = set()
    for metric in metrics.every_metric():
        for family in metric.describe() if hasattr(metric, "describe") else metric.collect():
            names.add(re.sub(r"_total$", "", family.name))
    assert names == API | WORKER | ON_FIRST_USE
