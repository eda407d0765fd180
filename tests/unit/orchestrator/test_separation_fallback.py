"""The ``separate`` stage's fallback to ducking, and the speech stem it hands the speech stages.

Foreseeable failures of the separator (Triton unreachable, the model missing, a malformed mask,
memory short) fall back to ducking with a reason for the quality warning; a bug in our code
still fails the stage. The unreachable server is a real Triton client on a closed port.
"""

from __future__ import annotations

import errno
import socket
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.errors import ConfigurationError, PolydubError, ServiceUnavailable, classify
from polydub.infra.triton import InferenceClient, RetryPolicy
from polydub.media.pcm import read_wav, write_wav
from polydub.orchestrator.inference.separation import TritonSeparator
from polydub.orchestrator.pipeline import StageContext
from polydub.orchestrator.services import Services
from polydub.orchestrator.stages.separate import fallback_reason, speech_audio
from polydub.orchestrator.state import FinishedStages, JobRecord
from polydub.serving.names import SeparationIn, SeparationOut

pytestmark = pytest.mark.unit

SR = 48000


class Masks:
    """Answers every chunk with ``mask(spectrogram)`` or raises ``error``."""

    def __init__(self, mask: Any = None, error: Exception | None = None) -> None:
        self.mask = mask
        self.error = error

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]:
        if self.error is not None:
            raise self.error
        spec = inputs[SeparationIn.SPECTROGRAM]
        return {SeparationOut.SPEECH_MASK: np.asarray(self.mask(spec), np.float32)}


@pytest.fixture
def original(tmp_path: Path) -> Path:
    t = np.arange(SR * 7) / SR  # more than one 6 s chunk
    tone = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t)
    stereo = np.stack([tone, tone], axis=1).astype(np.float32)  # centred, like dialogue
    return write_wav(tmp_path / "original48k.wav", stereo, SR)


async def test_an_unreachable_triton_falls_back(original: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = InferenceClient(f"127.0.0.1:{port}", retry=RetryPolicy(attempts=1), timeout=5.0)
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await TritonSeparator(client).separate(original, tmp_path / "bg.wav")
    finally:
        await client.close()
    assert fallback_reason(caught.value) == "separation failed: triton_unavailable"


@pytest.mark.parametrize(
    "mask",
    [
        lambda spec: np.ones(spec.shape[2:], np.float32),  # no batch dimension
        lambda spec: np.full((1, *spec.shape[2:]), np.nan, np.float32),  # a diverged model
        lambda spec: np.ones((1, 3, 3), np.float32),  # exported for another STFT
    ],
)
async def test_a_malformed_mask_falls_back(original: Path, tmp_path: Path, mask: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        await TritonSeparator(Masks(mask)).separate(original, tmp_path / "bg.wav")
    assert caught.value.code == "separation_bad_output"
    assert fallback_reason(caught.value) == "separation failed: separation_bad_output"


def test_failures_of_the_model_or_server_fall_back_and_bugs_surface() -> None:
    missing = ConfigurationError("unknown model 'separation'", code="model_not_found")
    assert fallback_reason(missing) == "separation failed: model_not_found"
    assert fallback_reason(MemoryError()) == "separation failed: out_of_memory"
    full = OSError(errno.ENOSPC, "No space left on device")
    assert fallback_reason(full) == "separation failed: disk_full"
    assert fallback_reason(PermissionError(errno.EACCES, "denied")) is None
    assert fallback_reason(classify(RuntimeError("grpc hiccup"))) is not None
    assert fallback_reason(TypeError("bad call")) is None
    assert fallback_reason(ValueError("bad shape")) is None  # not ours to guess: surfaces
    wrapped = classify(AttributeError("'NoneType' object has no attribute 'shape'"))
    assert isinstance(wrapped, PolydubError) and fallback_reason(wrapped) is None


async def test_a_bug_in_the_client_surfaces(original: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        await TritonSeparator(Masks(error=TypeError("oops"))).separate(original, tmp_path / "b")


async def test_the_speech_stem_is_written_at_16_khz_and_sums_back(
    original: Path, tmp_path: Path
) -> None:
    everything = Masks(lambda spec: np.ones((spec.shape[0], *spec.shape[2:]), np.float32))
    separator = TritonSeparator(everything)
    await separator.separate(original, tmp_path / "bg.wav", speech_wav=tmp_path / "speech.wav")
    speech, rate = read_wav(tmp_path / "speech.wav")
    background, _ = read_wav(tmp_path / "bg.wav")
    source, _ = read_wav(original)
    assert rate == 16000 and speech.shape == (7 * 16000, 1)
    # An all-speech mask: the stem is the whole (down-sampled) input, the background what the
    # STFT and resampling round trips leave, far below the input.
    assert float(np.std(speech)) == pytest.approx(0.1, rel=0.02)
    assert float(np.std(background)) < 0.01 * float(np.std(source))
    assert separator.figures is not None and separator.figures.chunks >= 2


def _context(finished: dict[tuple[str, str], dict[str, Any]]) -> StageContext:
    job = JobRecord(uuid.uuid4(), 1, None, ("spa",), {}, "in", None, None)

    async def report(done: int, total: int) -> None:
        return None

    return StageContext(
        job, "diarize", "", FinishedStages(finished), cast(Services, None), Path(), Path(), report
    )


def test_the_speech_stages_hear_the_stem_when_separation_made_one() -> None:
    extracted = {("extract_audio", ""): {"speech16k": "jobs/j/extract_audio/_/speech16k.wav"}}
    assert speech_audio(_context(extracted)) == "jobs/j/extract_audio/_/speech16k.wav"
    ducked = {**extracted, ("separate", ""): {"background": "keep"}}  # off, or a fallback
    assert speech_audio(_context(ducked)) == "jobs/j/extract_audio/_/speech16k.wav"
    stem = {"background": "separate", "speech16k": "jobs/j/separate/_/speech16k.wav"}
    separated = {**extracted, ("separate", ""): stem}
    assert speech_audio(_context(separated)) == "jobs/j/separate/_/speech16k.wav"
