import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from polydub.errors import NotFound
from polydub.infra.storage import ObjectStore
from polydub.settings import Settings
from polydub.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def store(services: Stack, stack_settings: Settings) -> ObjectStore:
    return ObjectStore(stack_settings)


async def test_object_round_trip_with_metadata(store: ObjectStore) -> None:
    key = f"tests/{uuid.uuid4()}/hello.bin"
    payload = bytes(range(256)) * 1000
    stored = await store.put_bytes(
        key, payload, "application/x-test", {"filename": "näive 名前 %41.mp4"}
    )
    assert stored.size == len(payload)
    assert await store.get_bytes(key) == payload
    info = await store.stat(key)
    assert info.content_type == "application/x-test"
    assert info.metadata == {"filename": "näive 名前 %41.mp4"}
    assert await store.exists(key)
    assert await store.delete_prefix(key.rsplit("/", 1)[0]) == 1
    assert not await store.exists(key)
    with pytest.raises(NotFound):
        await store.get_bytes(key)


async def test_streamed_upload_of_unknown_length(store: ObjectStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = f"tests/{uuid.uuid4()}/stream.bin"
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (17 * 1024 * 1024 + 5))  # over one part: exercises multipart
    with path.open("rb") as f:
        stored = await store.put_stream(key, f, length=-1)
    assert stored.size == path.stat().st_size
    await store.delete_prefix(key)


async def test_presigned_get_is_fetched_and_a_tampered_one_refused(store: ObjectStore) -> None:
    key = f"tests/{uuid.uuid4()}/out.srt"
    await store.put_bytes(key, b"1\n00:00:00,000 --> 00:00:01,000\nhola\n", "application/x-subrip")
    url = store.presigned_get(key, filename="dub.es.srt")
    async with httpx.AsyncClient() as http:
        ok = await http.get(url)
        assert ok.status_code == 200
        assert ok.content.startswith(b"1\n00:00:00,000")
        assert ok.headers["content-disposition"] == 'attachment; filename="dub.es.srt"'

        # Point the signed URL at another key: the signature no longer matches.
        parts = urlsplit(url)
        tampered = urlunsplit(parts._replace(path=parts.path.replace("out.srt", "other.srt")))
        assert (await http.get(tampered)).status_code == 403
        # Stretch its lifetime: refused as well.
        query = dict(parse_qsl(parts.query))
        query["X-Amz-Expires"] = "604800"
        stretched = urlunsplit(parts._replace(query=urlencode(query)))
        assert (await http.get(stretched)).status_code == 403
    await store.delete_prefix(key)
