"""The review routes on the real API and PostgreSQL without a pipeline: the voices the served
models offer, and what the segment routes answer before there are segments or for others' jobs.
(Edits and renders of a dubbed job run on real workers: tests/e2e/test_review.py.)"""

from __future__ import annotations

import uuid

import httpx
import pytest

from polydub.voice_catalog import VARIANTS, voices_of
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import Media
from tests.integration.api.test_lifecycle import submit

pytestmark = pytest.mark.integration


async def test_voices_of_the_served_speech_models(
    clients: Clients, anon: httpx.AsyncClient
) -> None:
    every = await clients.a.get("/api/v1/voices")
    assert every.status_code == 200, every.text
    # Each model's own voice, then its pitch variants (polydub.voice_catalog).
    assert {(v["id"], v["language"]) for v in every.json()["voices"]} == {
        (voice.id, language)
        for language in ("spa", "fra")
        for voice in voices_of(f"mms_tts_{language}")
    }
    spanish = await clients.a.get("/api/v1/voices", params={"language": "spa"})
    assert [(v["id"], v["gender"], v["f0"]) for v in spanish.json()["voices"]] == [
        ("mms_tts_spa", None, None),
        *((f"mms_tts_spa:{v.name}", v.gender, v.f0) for v in VARIANTS),
    ]
    tagged = await clients.a.get("/api/v1/voices", params={"language": "es-ES"})
    assert tagged.json() == spanish.json()  # a tag as people write it
    none = await clients.a.get("/api/v1/voices", params={"language": "deu"})
    assert none.json()["voices"] == []
    assert (await anon.get("/api/v1/voices")).status_code == 401


async def test_segments_before_translation_and_of_others(clients: Clients, media: Media) -> None:
    response = await submit(clients.a, media.clip, targets="spa")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    url = f"/api/v1/jobs/{job_id}/languages/spa/segments"

    early = await clients.a.get(url)
    assert early.status_code == 409 and early.json()["error"]["code"] == "segments_not_ready"
    assert (await clients.b.get(url)).status_code == 404  # someone else's job
    unknown = await clients.a.get(f"/api/v1/jobs/{job_id}/languages/deu/segments")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "language_not_in_job"
    missing = await clients.a.get(f"/api/v1/jobs/{uuid.uuid4()}/languages/spa/segments")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"

    edit = {"segments": [{"id": 0, "translation": "hola"}]}
    no_match = await clients.a.patch(url, json=edit)
    assert no_match.status_code == 428
    assert (await clients.b.patch(url, json=edit, headers={"If-Match": "*"})).status_code == 404
    bad = await clients.a.patch(url, json={"segments": [{"id": 0, "text": "x"}]})
    assert bad.status_code == 422  # an unknown field

    render = await clients.a.post(f"/api/v1/jobs/{job_id}/languages/spa/render")
    assert render.status_code == 409  # nothing translated yet
    assert (await clients.b.post(f"/api/v1/jobs/{job_id}/languages/spa/render")).status_code == 404
    old = await clients.a.get(f"/api/v1/jobs/{job_id}/languages/spa/versions/1")
    assert old.status_code == 404 and old.json()["error"]["code"] == "version_not_found"
