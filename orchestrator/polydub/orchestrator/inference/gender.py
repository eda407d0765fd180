"""Voice gender from pitch: features from the Triton model ``gender``, the rule applied here.

Rule (see ``export/gender.py`` for why pitch): voiced frames are those with periodicity >= 0.7
and energy within 35 dB of the loudest frame (and above -55 dBFS); the median F0 of the voiced
frames decides: >= 165 Hz -> "female", below -> "male" (adult speaking F0: male ~85-155 Hz,
female ~165-255 Hz). Fewer than 0.2 s of voiced frames -> "unknown".

confidence = 0.5 + 0.5 * tanh(d / 3) * min(1, voiced seconds): d is the distance of the median
F0 from 165 Hz in semitones, so 3 semitones away (~139 / ~196 Hz) with a second of voiced
speech gives 0.88, and the estimate is less sure on little speech.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from polydub.orchestrator.inference.vad import Infer, as_audio
from polydub.serving.names import GENDER

MODEL = GENDER
PIECE_SAMPLES = 160000  # 10 s per request; the last piece is zero-padded (unvoiced)
FRAME_HOP_S = 0.01
THRESHOLD_HZ = 165.0
MIN_PERIODICITY = 0.7
DYNAMIC_RANGE_DB = 35.0
FLOOR_DB = -55.0
MIN_VOICED_S = 0.2


@dataclass(frozen=True)
class GenderEstimate:
    label: Literal["male", "female", "unknown"]
    confidence: float  # 0.5 (a coin flip) .. 1.0; 0.0 for unknown
    median_f0_hz: float | None
    voiced_s: float = 0.0


def decide(
    f0_hz: NDArray[np.float32], periodicity: NDArray[np.float32], energy_db: NDArray[np.float32]
) -> GenderEstimate:
    """The rule, on frame features (any number of frames, 10 ms apart)."""
    if f0_hz.size == 0:
        return GenderEstimate("unknown", 0.0, None)
    loud = energy_db >= max(float(energy_db.max()) - DYNAMIC_RANGE_DB, FLOOR_DB)
    voiced = (periodicity >= MIN_PERIODICITY) & loud & np.isfinite(f0_hz)
    voiced_s = float(voiced.sum()) * FRAME_HOP_S
    if voiced_s < MIN_VOICED_S:
        return GenderEstimate("unknown", 0.0, None, voiced_s)
    median = float(np.median(f0_hz[voiced]))
    semitones = 12.0 * abs(math.log2(median / THRESHOLD_HZ))
    confidence = 0.5 + 0.5 * math.tanh(semitones / 3.0) * min(1.0, voiced_s)
    label: Literal["male", "female"] = "female" if median >= THRESHOLD_HZ else "male"
    return GenderEstimate(label, round(confidence, 4), round(median, 2), round(voiced_s, 2))


class GenderClient:
    def __init__(self, client: Infer, *, model: str = MODEL) -> None:
        self.client = client
        self.model = model

    async def features(
        self, audio16k: NDArray[Any]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Frame features of the whole audio: (f0_hz, periodicity, energy_db)."""
        audio = as_audio(audio16k)
        pieces = [audio[i : i + PIECE_SAMPLES] for i in range(0, audio.size, PIECE_SAMPLES)]
        results = await asyncio.gather(
            *(
                self.client.infer(
                    self.model,
                    {"waveform": np.pad(p, (0, PIECE_SAMPLES - p.size))[None]},
                    ["f0_hz", "periodicity", "energy_db"],
                )
                for p in pieces
            )
        )
        if not results:
            empty = np.zeros(0, np.float32)
            return empty, empty, empty
        f0, periodicity, energy = (
            np.concatenate([r[name][0] for r in results]).astype(np.float32)
            for name in ("f0_hz", "periodicity", "energy_db")
        )
        return f0, periodicity, energy

    async def classify(self, audio16k: NDArray[Any]) -> GenderEstimate:
        """Gender estimate of one speaker's audio (e.g. their turns concatenated)."""
        return decide(*await self.features(audio16k))
