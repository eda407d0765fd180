"""A chosen voice is heard, on the real stack: ``GET /voices`` lists each served MMS-TTS voice
and its pitch variants (polydub.voice_catalog); choosing a variant for one speaker and
rendering again renders that speaker's segments at the variant's shift (timing.json), and
changes their speech throughout, while every other speaker's speech, and the mix outside the
chosen speaker's segments, stay sample for sample what they were; the choice survives the
render. The tiny random-weight TTS speaks noise with no pitch to estimate, so the F0 a variant
puts real speech at is measured in tests/integration/media/test_voice_variants.py."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys, JobMessage
from polydub.media.pcm import read_wav
from polydub.orchestrator.voices import semitones_between
from polydub.voice_catalog import VARIANTS, variant_shift
from tests.e2e.harness import (
    Pipeline,
    api_client,
    stage_output_key,
    wait_terminal,
    wait_terminal_after_render,
)
from tests.factories import create_job
from tests.media import make_two_speaker_clip

pytestmark = pytest.mark.e2e

RATE = 48_000
WORDS = "hola a todos, esto es una frase bastante larga para escuchar la voz"


async def _finished_job(
    pipeline: Pipeline, owner: uuid.UUID, clip: Path, **options: Any
) -> uuid.UUID:
    """A job of ``owner`` dubbed into Spanish (two speakers told apart: ``num_speakers``)."""
    job_id = uuid.uuid4()
    input_key = JobKeys(job_id).input
    await pipeline.store.put_file(input_key, clip, "application/octet-stream")
    job_id = await create_job(pipeline.pool, owner, ["spa"], input_key=input_key, options=options)
    message = JobMessage(job_id)
    await pipeline.nc.jetstream().publish(
        pipeline.settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )
    job = await wait_terminal(pipeline.pool, job_id, limit=400)
    assert job["status"] == "succeeded", job["error_message"]
    return job_id


async def _speech(store: ObjectStore, key: str) -> list[NDArray[np.float32]]:
    """synthesize's rendered speech, one array per segment (speech48k.npz)."""
    with np.load(io.BytesIO(await store.get_bytes(key))) as data:
        return [np.asarray(data[f"arr_{i}"], np.float32) for i in range(len(data.files))]


async def _json(store: ObjectStore, key: str) -> Any:
    return json.loads(await store.get_bytes(key))


async def test_a_chosen_voice_moves_one_speakers_pitch_and_nothing_else(
    pipeline: Pipeline, api: str, tmp_path: Path
) -> None:
    pool, store = pipeline.pool, pipeline.store
    client, owner, _ = await api_client(pool, api, "voice-chooser")
    clip = make_two_speaker_clip(tmp_path / "speech.wav", seconds=12.0, with_video=False)
    job_id = await _finished_job(pipeline, owner, clip.path, num_speakers=2)

    listed = (await client.get("/voices", params={"language": "spa"})).json()["voices"]
    ids = {v["id"] for v in listed}
    assert ids == {"mms_tts_spa", *(f"mms_tts_spa:{v.name}" for v in VARIANTS)}
    assert {v["gender"] for v in listed} == {None, "male", "female"}

    url = f"/jobs/{job_id}/languages/spa/segments"
    read = await client.get(url)
    segments = read.json()["segments"]
    speakers = sorted({s["speaker"] for s in segments})
    assert len(speakers) >= 2, segments  # the clip's two voices
    # Words for every segment first (the tiny NLLB's are noise the TTS may say nothing for):
    # that render is the baseline the voice choice is compared with.
    words = {"segments": [{"id": s["id"], "translation": WORDS} for s in segments]}
    spoken_words = await client.patch(url, json=words, headers={"If-Match": read.headers["ETag"]})
    assert spoken_words.status_code == 200, spoken_words.text
    first = await client.post(
        f"/jobs/{job_id}/languages/spa/render", headers={"If-Match": spoken_words.headers["ETag"]}
    )
    assert first.status_code == 202, first.text
    await wait_terminal_after_render(pool, job_id)
    read = await client.get(url)
    segments = read.json()["segments"]
    # The speaker the TTS said most for (random weights say nothing for some segments).
    speech_v1 = await _speech(store, await stage_output_key(pool, job_id, "synthesize", "speech"))
    spoken = {s["speaker"]: 0 for s in segments}
    for s, samples in zip(segments, speech_v1, strict=True):
        spoken[s["speaker"]] += samples.size
    target = max(spoken, key=lambda speaker: spoken[speaker])
    assert spoken[target] > 0, spoken
    cast = await _json(store, await stage_output_key(pool, job_id, "assign_voices", "voices"))
    own_f0 = float(cast["voices"][0]["median_f0"])
    automatic = {a["speaker"]: float(a["semitones"]) for a in cast["assignments"]}
    # The variant farthest from the speaker's pitch now: the change is plain to hear.
    now_f0 = own_f0 * 2 ** (automatic[target] / 12)
    variant = max(VARIANTS, key=lambda v: abs(semitones_between(now_f0, v.f0)))
    chosen = f"mms_tts_spa:{variant.name}"

    unknown = await client.patch(
        url,
        json={"voices": {target: "mms_tts_spa:whisper"}},
        headers={"If-Match": read.headers["ETag"]},
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_voice"
    edited = await client.patch(
        url, json={"voices": {target: chosen}}, headers={"If-Match": read.headers["ETag"]}
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["voices"][target] == chosen

    wav_v1 = await stage_output_key(pool, job_id, "mix", "dubbed_wav")
    render = await client.post(
        f"/jobs/{job_id}/languages/spa/render", headers={"If-Match": edited.headers["ETag"]}
    )
    assert render.status_code == 202, render.text
    await wait_terminal_after_render(pool, job_id)

    after = (await client.get(url)).json()["segments"]
    assert [s["voice"] for s in after] == [
        chosen if s["speaker"] == target else "mms_tts_spa" for s in segments
    ]
    timing = await _json(store, await stage_output_key(pool, job_id, "synthesize", "timing"))
    shifts = [float(x) for x in timing["semitones"]]
    expected = variant_shift(variant, own_f0)
    assert shifts == [
        expected if s["speaker"] == target else automatic[s["speaker"]] for s in segments
    ]
    speech_v2 = await _speech(store, await stage_output_key(pool, job_id, "synthesize", "speech"))
    assert len(speech_v1) == len(speech_v2) == len(segments)

    moved = 0
    for s, before, now in zip(segments, speech_v1, speech_v2, strict=True):
        if s["speaker"] != target:
            assert np.array_equal(before, now), s  # another speaker: sample for sample
        else:  # the same speech at another pitch: as long, and changed throughout
            assert before.shape == now.shape
            if before.size:  # (a segment the TTS said nothing for has nothing to shift)
                change = float(np.sqrt(np.mean((before - now) ** 2)))
                assert change > 0.1 * float(np.sqrt(np.mean(before**2))), s
                moved += 1
    assert moved, "the chosen speaker has no spoken segment"

    await _assert_mix_changed_only_for(pipeline, tmp_path, job_id, wav_v1, segments, target)
    await client.aclose()


async def _assert_mix_changed_only_for(
    pipeline: Pipeline,
    tmp_path: Path,
    job_id: uuid.UUID,
    wav_v1: str,
    segments: list[dict[str, Any]],
    speaker: str,
) -> None:
    """The mix equals v1's outside the speaker's segments (with the ducking around them)."""
    paths = {"v1": tmp_path / "v1.wav", "v2": tmp_path / "v2.wav"}
    await pipeline.store.download(wav_v1, paths["v1"])
    await pipeline.store.download(
        await stage_output_key(pipeline.pool, job_id, "mix", "dubbed_wav"), paths["v2"]
    )
    v1, v2 = (read_wav(p)[0][:, 0] for p in paths.values())
    assert v1.shape == v2.shape
    keep = np.ones(v1.shape[0], bool)
    for s in segments:
        if s["speaker"] == speaker:
            lo = s["start"] - 0.13  # the duck's attack
            hi = s["start"] + s["fit"]["dubbed_duration"] + 0.95  # a bridged gap and the release
            keep[max(0, int(lo * RATE)) : int(hi * RATE)] = False
    assert keep.any() and not keep.all()
    assert np.max(np.abs(v1[keep] - v2[keep])) < 1e-6
    assert np.max(np.abs(v1[~keep] - v2[~keep])) > 1e-3
