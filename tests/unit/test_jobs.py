"""The job vocabulary (polydub.jobs): the queue message, the object key layout, and that each
tier uses these one definitions rather than copies."""

from __future__ import annotations

import json
import uuid

import pytest

from polydub import jobs, schemas
from polydub.api import job_view, jobs_service
from polydub.api.routes import events, outputs
from polydub.client import _common as client_common
from polydub.errors import InvalidInput
from polydub.jobs import (
    ACTIVE,
    SETTLED,
    TERMINAL,
    ArtifactKind,
    JobKeys,
    JobMessage,
    JobStatus,
)
from polydub.orchestrator import state
from polydub.orchestrator.stages import deliver

pytestmark = pytest.mark.unit

JOB = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_the_job_message_round_trips_through_bytes_and_json() -> None:
    for message in (JobMessage(JOB), JobMessage(JOB, retry=3)):
        assert JobMessage.from_bytes(message.to_bytes()) == message
        assert JobMessage.from_json(message.to_json()) == message
    assert json.loads(JobMessage(JOB, 2).to_bytes()) == {"job_id": str(JOB), "attempt_hint": 2}


def test_each_retry_has_a_message_id_of_its_own() -> None:
    assert JobMessage(JOB).msg_id == str(JOB)
    assert JobMessage(JOB, 1).msg_id == f"{JOB}:retry:1"
    assert len({JobMessage(JOB, n).msg_id for n in range(5)}) == 5


def test_a_message_without_attempt_hint_is_a_first_submit() -> None:
    # What the tests, the e2e harness and earlier publishers send: the job id alone.
    assert JobMessage.from_bytes(json.dumps({"job_id": str(JOB)}).encode()) == JobMessage(JOB, 0)


@pytest.mark.parametrize(
    "data",
    [b"not json", b"", None, b"[]", b"{}", b'{"job_id": "nope"}', b'{"job_id": 7}', b"\xff"],
)
def test_a_malformed_message_is_invalid_input(data: bytes | None) -> None:
    with pytest.raises(InvalidInput) as raised:
        JobMessage.from_bytes(data)
    assert raised.value.code == "malformed_job_message"


def test_the_object_key_layout() -> None:
    keys = JobKeys(JOB)
    assert keys.input == f"inputs/{JOB}/source"
    assert keys.upload == f"uploads/{JOB}/source"  # where a presigned form writes: no job reads it
    assert keys.prefixes == (f"uploads/{JOB}/", f"inputs/{JOB}/", f"jobs/{JOB}/")
    assert keys.stage("mux", "fra", "mux.json") == f"jobs/{JOB}/mux/fra/mux.json"
    assert keys.stage("extract", "", "a.wav") == f"jobs/{JOB}/extract/_/a.wav"
    assert keys.stage("mux", "fra", "mux.mp4", 3) == f"jobs/{JOB}/mux/fra/a3/mux.mp4"  # a worker's
    assert keys.preview("spa", 2.0, 4.0, "mp4") == f"jobs/{JOB}/previews/spa/2000-4000.mp4"
    assert keys.preview("spa", 0.0015, 1.2344, "m4a").endswith("/2-1234.m4a")


def test_every_key_of_a_job_is_under_one_of_its_prefixes() -> None:
    # A purge deletes by prefix: a key outside them would outlive the job.
    keys = JobKeys(JOB)
    made = [
        keys.upload,
        keys.input,
        keys.stage("mix", "deu", "dubbed.wav"),
        keys.preview("deu", 0, 1, "mp4"),
    ]
    assert all(key.startswith(keys.prefixes) for key in made)
    other = JobKeys(uuid.uuid4())
    assert not any(key.startswith(other.prefixes) for key in made)


def test_statuses() -> None:
    assert set(JobStatus) == ACTIVE | SETTLED and not ACTIVE & SETTLED
    # A StrEnum equals its value. "review" (a job or language waiting for a person and a
    # render) is settled, not finished: a job in review has not succeeded yet.
    assert {"succeeded", "failed", "cancelled"} == TERMINAL
    assert {"review"} == SETTLED - TERMINAL and "review" not in TERMINAL
    assert "failed" in TERMINAL and "running" not in TERMINAL and None not in TERMINAL


def test_terminal_and_the_statuses_are_defined_once() -> None:
    # vars(): each module imports the name, and must not define its own copy.
    assert vars(state)["TERMINAL"] is jobs.TERMINAL
    assert vars(events)["SETTLED"] is jobs.SETTLED
    for name in ("TERMINAL", "SETTLED"):
        assert vars(client_common).get(name, getattr(jobs, name)) is getattr(jobs, name)
    assert schemas.JobOut.model_fields["status"].annotation is JobStatus
    assert schemas.TargetOut.model_fields["status"].annotation is JobStatus
    assert vars(jobs_service)["ACTIVE"] is jobs.ACTIVE


def test_artifact_kinds_are_defined_once() -> None:
    assert vars(deliver)["ArtifactKind"] is jobs.ArtifactKind
    assert vars(outputs)["ArtifactKind"] is jobs.ArtifactKind
    # The outputs' file names cover every kind the worker delivers, and no other.
    assert set(job_view.FILE_NAMES) == set(ArtifactKind)
    assert all(isinstance(kind, ArtifactKind) for kind in job_view.FILE_NAMES)
    assert set(deliver._SUBTITLES.values()) == {k for k in ArtifactKind if "subtitles" in k}
