"""The speech a render reuses, on the real S3: one object per language and run, written once and
read once, sample-exact; and the per-request objects of jobs made before it still serve."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest

from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys
from polydub.orchestrator.revise import SpeechCache
from polydub.settings import Settings
from polydub.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def store(services: Stack, stack_settings: Settings) -> ObjectStore:
    return ObjectStore(stack_settings)


def _speech(seed: int, n: int = 16_000) -> np.ndarray:  # type: ignore[type-arg]
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.1


async def test_one_object_per_run_and_a_render_reads_it_back(store: ObjectStore) -> None:
    keys = JobKeys(uuid.uuid4())
    first = SpeechCache(store, keys, "spa", reuse=False)
    await first.load()  # a first run reads nothing
    asked = [first.key(f"hola {i}", "mms_tts_spa", 1.0, i) for i in range(40)]
    for i, key in enumerate(asked):
        assert await first.get(key) is None
        first.put(key, _speech(i))
    saved = await first.save(keys.stage("synthesize", "spa", "speech_cache.npz", 1))
    # 40 TTS requests, one object (the old cache: an object per request under tts/spa/)
    assert await store.list_keys(keys.speech_cache("spa")) == []
    assert await store.list_keys(keys.prefix) == [saved]

    render = SpeechCache(store, keys, "spa", reuse=True, previous=saved)
    await render.load()
    for i, key in enumerate(asked[:39]):
        found = await render.get(key)
        assert found is not None and np.array_equal(found, _speech(i))  # sample for sample
    changed = render.key("adiós", "mms_tts_spa", 1.0, 39)
    assert await render.get(changed) is None
    render.put(changed, _speech(99))
    assert render.hits == 39
    again = await render.save(keys.stage("synthesize", "spa", "speech_cache.npz", 2))
    with np.load(io.BytesIO(await store.get_bytes(again)), allow_pickle=False) as kept:
        assert sorted(kept.files) == sorted([*asked[:39], changed])  # what the next render needs
    await store.delete_prefix(keys.prefix)


async def test_a_job_cached_the_old_way_is_still_read(store: ObjectStore) -> None:
    keys = JobKeys(uuid.uuid4())
    cache = SpeechCache(store, keys, "spa", reuse=True)  # no object of the run before recorded
    key = cache.key("hola", "mms_tts_spa", 1.0, 7)
    buffer = io.BytesIO()
    np.save(buffer, _speech(7), allow_pickle=False)
    await store.put_bytes(f"{keys.speech_cache('spa')}{key}.npy", buffer.getvalue())
    await cache.load()
    found = await cache.get(key)
    assert found is not None and np.array_equal(found, _speech(7)) and cache.hits == 1
    assert await cache.get(cache.key("adiós", "mms_tts_spa", 1.0, 7)) is None
    await store.delete_prefix(keys.prefix)
