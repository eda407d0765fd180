"""Issue #13, input found by the probe: non-finite numbers (item 2), an Idempotency-Key reused for
another request (item 7) and malformed media the worker used to be the first to refuse (item 7),
each against the served API on the session's stack."""

from __future__ import annotations

import asyncio
import json
import re
import types
import typing
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from polydub import schemas
from polydub.api.app import create_app
from polydub.api.auth import NewKey
from polydub.settings import Settings
from tests.integration.api.helpers import Media, Served, multipart_body
from tests.integration.hostile.corpus import avi, gab2, wav_with_sample_rate

pytestmark = pytest.mark.integration

FIELDS = [("target_languages", "spa"), ("source_language", "eng")]
NON_FINITE = ["inf", "Infinity", "-inf", "NaN", "1e309"]
# The same in a JSON body: its non-standard tokens, an overflowing literal, a string.
NON_FINITE_JSON = ["Infinity", "-Infinity", "NaN", "1e309", '"inf"']


@pytest.fixture
async def client(api: Served, fresh_key: NewKey) -> typing.AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {fresh_key.key}"}, timeout=20
    ) as keyed:
        yield keyed


def _mentions_float(annotation: Any) -> bool:
    if annotation is float:
        return True
    return any(_mentions_float(arg) for arg in typing.get_args(annotation))


def _request_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    pending: list[type[BaseModel]] = [schemas.Strict]
    while pending:
        model = pending.pop()
        found.append(model)
        pending.extend(model.__subclasses__())
    return found


def _assert_names(answer: httpx.Response, field: str) -> None:
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "non_finite_number", error
    assert field in error["message"] and error["detail"][0]["loc"][-1] == field


async def test_non_finite_times_are_a_422_naming_the_field_and_keep_the_connection(
    client: httpx.AsyncClient, media: Media
) -> None:
    clip = await asyncio.to_thread(media.clip.read_bytes)
    for field in ("start_time", "end_time"):
        for value in NON_FINITE:
            body, content_type = multipart_body([*FIELDS, (field, value)], clip)
            answer = await client.post(
                "/api/v1/jobs", content=body, headers={"Content-Type": content_type}
            )
            _assert_names(answer, field)
        for token in NON_FINITE_JSON:
            raw = (
                f'{{"upload_id": "{uuid.uuid4()}", "target_languages": ["spa"],'
                f' "{field}": {token}}}'
            )
            answer = await client.post(
                "/api/v1/jobs", content=raw, headers={"Content-Type": "application/json"}
            )
            _assert_names(answer, field)
    # finite but absurd: out of range, also named
    body, content_type = multipart_body([*FIELDS, ("end_time", "1e12")], clip)
    answer = await client.post("/api/v1/jobs", content=body, headers={"Content-Type": content_type})
    assert (
        answer.status_code == 422 and answer.json()["error"]["detail"][0]["loc"][-1] == "end_time"
    )
    # the keep-alive connection survived every refusal (it used to be reset by a 500)
    assert (await client.get("/api/v1/jobs")).status_code == 200


async def test_every_request_model_and_float_query_parameter_refuses_non_finite_numbers(
    api: Served, api_settings: Settings, client: httpx.AsyncClient
) -> None:
    floats = 0
    for model in _request_models():
        for name, info in model.model_fields.items():
            if not _mentions_float(info.annotation):
                continue
            floats += 1
            for value in NON_FINITE:
                with pytest.raises(ValidationError) as refused:
                    model.model_validate({name: value})
                assert "finite_number" in {e["type"] for e in refused.value.errors()}, name
    assert floats >= 2  # start_time, end_time at least

    # Every query parameter the API documents as a number (the OpenAPI schema lists each
    # route's, a query model's fields expanded): "inf" and its kin are a 422 naming it.
    queried: list[str] = []
    schema = create_app(api_settings).openapi()
    for template, operations in schema["paths"].items():
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                if param["in"] != "query" or '"number"' not in json.dumps(param["schema"]):
                    continue
                path = re.sub(r"\{(\w*id)\}", lambda _: str(uuid.uuid4()), template)
                path = re.sub(r"\{\w+\}", "spa", path)
                for value in NON_FINITE:
                    answer = await client.request(method, path, params={param["name"]: value})
                    _assert_names(answer, param["name"])
                queried.append(f"{method} {template}?{param['name']}")
    assert queried, "no float query parameter found: the walk is broken"


async def test_an_idempotency_key_reused_for_another_request_is_refused(
    client: httpx.AsyncClient, media: Media, tmp_path: Path
) -> None:
    clip = await asyncio.to_thread(media.clip.read_bytes)
    headers = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}

    async def submit(fields: list[tuple[str, str]], data: bytes) -> httpx.Response:
        body, content_type = multipart_body(fields, data)
        return await client.post(
            "/api/v1/jobs", content=body, headers={**headers, "Content-Type": content_type}
        )

    first = await submit(FIELDS, clip)
    assert first.status_code == 202, first.text
    job_id = first.json()["id"]
    # the same request (its languages spelled another way) is a replay of the first job
    same = await submit([("target_languages", " SPA "), ("source_language", "eng")], clip)
    assert same.status_code == 202 and same.json()["id"] == job_id
    assert same.headers["Idempotent-Replayed"] == "true"
    # other options, or another file, under the same key: 422, never the first job
    for fields, data in (([*FIELDS, ("num_speakers", "2")], clip), (FIELDS, clip + b"\0")):
        other = await submit(fields, data)
        assert other.status_code == 422, other.text
        error = other.json()["error"]
        assert error["code"] == "idempotency_mismatch" and error["detail"]["job_id"] == job_id
    listed = (await client.get("/api/v1/jobs")).json()["items"]
    assert [j["id"] for j in listed] == [job_id]

    # the JSON path after a presigned upload
    async def upload() -> str:
        reserved = (await client.post("/api/v1/uploads")).json()
        async with httpx.AsyncClient() as plain:
            sent = await plain.post(
                reserved["url"], data=reserved["fields"], files={"file": ("a.mp4", clip)}
            )
            assert sent.status_code == 204, sent.text
        return str(reserved["upload_id"])

    json_headers = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    body = {"upload_id": await upload(), "target_languages": ["fra"]}
    created = await client.post("/api/v1/jobs", json=body, headers=json_headers)
    assert created.status_code == 202, created.text
    again = await client.post("/api/v1/jobs", json=body, headers=json_headers)
    assert again.status_code == 202 and again.json()["id"] == created.json()["id"]
    # a retry of the whole submission reserves and fills an upload of its own: the upload id is
    # no part of the request, its content is (test_idempotency_uploads), so the same file replays
    retried = await client.post(
        "/api/v1/jobs", json={**body, "upload_id": await upload()}, headers=json_headers
    )
    assert retried.status_code == 202, retried.text
    assert retried.json()["id"] == created.json()["id"]
    assert retried.headers["Idempotent-Replayed"] == "true"
    changed = await client.post(
        "/api/v1/jobs", json={**body, "target_languages": ["spa"]}, headers=json_headers
    )
    assert changed.status_code == 422
    assert changed.json()["error"]["code"] == "idempotency_mismatch"


@pytest.mark.parametrize(
    ("name", "filename", "status", "code"),
    [
        ("gab2", b"a.avi", 415, "unsupported_media_type"),
        ("wav 1 Hz", b"a.wav", 422, "corrupt_media"),
        ("wav 2 GHz", b"a.wav", 422, "corrupt_media"),
        ("wav 4 GHz", b"a.wav", 422, "corrupt_media"),
    ],
)
async def test_malformed_media_is_refused_at_upload(
    name: str,
    filename: bytes,
    status: int,
    code: str,
    client: httpx.AsyncClient,
    media: Media,
) -> None:
    wav = await asyncio.to_thread(media.wav.read_bytes)
    data = {
        "gab2": lambda: avi(subtitle=gab2(b"1\n00:00:00,000 --> 00:00:01,000\nhi\n")),
        "wav 1 Hz": lambda: wav_with_sample_rate(wav, 1, data_bytes=8),
        "wav 2 GHz": lambda: wav_with_sample_rate(wav, 2_000_000_000),
        "wav 4 GHz": lambda: wav_with_sample_rate(wav, 4_000_000_000),
    }[name]()
    body, content_type = multipart_body(FIELDS, data, filename)
    answer = await client.post("/api/v1/jobs", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert (await client.get("/api/v1/jobs")).json()["items"] == []  # no job was created


def test_the_walk_sees_annotated_optionals() -> None:
    """The helper the walks rely on: a FiniteFloat inside Optional and Annotated is a float."""
    assert _mentions_float(schemas.FiniteFloat | None)
    assert _mentions_float(typing.Annotated[float | None, "x"])
    assert not _mentions_float(int | None) and not _mentions_float(types.NoneType)
