"""The orchestrator's MMS-TTS client (``polydub.orchestrator.inference.tts``) in-process: its Triton
calls answered from the tiny export by onnxruntime; input checks, slot fitting and the model pool."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.errors import ConfigurationError, InvalidInput
from polydub.export.mms_tts import TOKENIZER_MODEL
from polydub.export.spec import ExportReport
from polydub.orchestrator.inference.tts import (
    ModelPool,
    TtsClient,
    predicted_frames,
    request_inputs,
    solve_length_scale,
)
from polydub.serving.tts_tokenizer import TtsTokenizer
from tests.unit.tiny_exports import TTS_MODEL, run_tts_onnx, tts_onnx_path

pytestmark = pytest.mark.unit


class LocalTriton:
    """The Triton calls TtsClient makes, answered in-process from an exported repository."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.loaded: set[str] = set()
        self.calls: list[str] = []
        self.last_inference_ms = 0

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        assert model in self.loaded, f"{model} used before it was loaded"
        self.calls.append(model)
        if model == TOKENIZER_MODEL:
            code = inputs["language"].reshape(-1)[0].decode()
            folder = self.repository / TOKENIZER_MODEL / "1" / "tokenizers"
            if code:
                body = (folder / f"{code}.json").read_bytes()
            else:
                codes = sorted(p.stem for p in folder.glob("*.json"))
                body = json.dumps({"languages": codes}).encode()
            return {"tokenizer": np.array([body], dtype=np.object_)}
        path = self.repository / model / "1" / "model.onnx"
        return dict(zip(outputs, run_tts_onnx(path, inputs, outputs), strict=True))

    async def load_model(self, model: str) -> None:
        self.loaded.add(model)

    async def unload_model(self, model: str) -> None:
        self.loaded.discard(model)

    async def repository_index(self) -> list[dict[str, Any]]:
        return [{"name": p.name} for p in self.repository.iterdir() if p.is_dir()]

    async def statistics(self, model: str) -> dict[str, Any]:
        return {"last_inference": str(self.last_inference_ms)}


async def test_client_rejects_bad_input_without_calling_triton(
    tts_export: tuple[Path, ExportReport],
) -> None:
    triton = LocalTriton(tts_export[0])
    client = TtsClient(triton)
    with pytest.raises(InvalidInput, match=r"supported: .*eng"):
        await client.synthesize("hello", "english")
    with pytest.raises(InvalidInput, match="speaking_rate"):
        await client.synthesize("hello", "eng", speaking_rate=0.0)
    empty = await client.synthesize("   ", "eng")
    assert empty.samples.shape == (0,) and empty.duration == 0.0
    assert triton.calls == []


async def test_client_synthesizes_and_reports_missing_voices(
    tts_export: tuple[Path, ExportReport], tts_spec: TtsTokenizer
) -> None:
    triton = LocalTriton(tts_export[0])
    client = TtsClient(triton)
    with pytest.raises(
        ConfigurationError, match=r"no MMS-TTS voice for .spa.*exported voices: eng"
    ):
        await client.synthesize("hola", "spa")
    speech = await client.synthesize("Hello there", "eng", speaking_rate=1.25, seed=3)
    ids = tts_spec.encode("Hello there")
    direct = run_tts_onnx(tts_onnx_path(tts_export[0]), request_inputs(ids, 0.8, 0.667, 0.8, 3))
    assert np.array_equal(speech.samples, direct[0][0, : int(direct[1][0, 0])])
    assert speech.sample_rate == 16_000 and speech.seed == 3 and speech.speaking_rate == 1.25
    assert TTS_MODEL in triton.loaded
    punctuation = await client.synthesize("?!", "eng")  # nothing speakable: no model call
    assert punctuation.duration == 0.0 and triton.calls.count(TTS_MODEL) == 1


async def test_synthesize_to_fit_lands_on_the_predicted_length(
    tts_export: tuple[Path, ExportReport],
) -> None:
    client = TtsClient(LocalTriton(tts_export[0]))
    text = "Fitting speech into the time slot of the original."
    natural = await client.synthesize(text, "eng", seed=11)
    for factor in (0.8, 1.12):
        target = natural.duration * factor
        fitted = await client.synthesize_to_fit(text, "eng", target, seed=11)
        assert fitted.duration <= target  # never overruns an achievable slot
        assert abs(fitted.duration - target) <= 0.05 * target
        # Not 1 / factor: per-token frames are rounded up, so the frame count is a step function.
        assert (fitted.speaking_rate > 1.0) == (factor < 1.0)
    too_short = await client.synthesize_to_fit(text, "eng", natural.duration / 3, seed=11)
    assert too_short.speaking_rate == pytest.approx(1.5)  # bounded by max_rate


def test_solve_length_scale_is_exact_on_the_step_function() -> None:
    durations = np.array([0.4, 2.2, 3.7, 1.0, 5.5], dtype=np.float32)
    for target in (14, 17, 20):
        scale = solve_length_scale(durations, target, 0.5, 2.0)
        assert predicted_frames(durations, scale) <= target
        assert predicted_frames(durations, scale * 1.01) > predicted_frames(durations, scale) or (
            scale == 2.0
        )
    assert solve_length_scale(durations, 2, 0.5, 2.0) == 0.5  # even the fastest overruns


async def test_pool_unloads_only_idle_models_not_in_use(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    triton = LocalTriton(tmp_path)
    now = [1000.0]
    pool = ModelPool(triton, idle_seconds=10, pinned=["c"], clock=lambda: now[0])
    for name in ("a", "b", "c"):
        await pool.ensure_loaded(name)
    with pytest.raises(ConfigurationError, match="'zzz' is not in Triton's model repository"):
        await pool.ensure_loaded("zzz")
    now[0] += 11
    async with pool.using("a"):
        assert await pool.unload_idle() == ["b"]  # a in use, c pinned
    assert await pool.unload_idle() == []  # a was just used
    now[0] += 11
    triton.last_inference_ms = int(now[0] * 1000) - 2000  # another worker used it 2 s ago
    assert await pool.unload_idle() == []
    triton.last_inference_ms = 0
    assert await pool.unload_idle() == ["a"]
    assert triton.loaded == {"c"} and pool.loaded == frozenset({"c"})
