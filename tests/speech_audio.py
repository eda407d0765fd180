"""Real speech made on the fly with espeak-ng (Debian package), resampled to 16 kHz mono float32."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave

import numpy as np
from numpy.typing import NDArray

from polydub.serving.names import SAMPLE_RATE

MALE = "en+m3"
FEMALE = "en+f3"


@functools.lru_cache(maxsize=32)
def _speak(text: str, voice: str) -> bytes:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is required for these tests: apt-get install espeak-ng")
    return subprocess.run(
        [binary, "-v", voice, "--stdout", text], check=True, capture_output=True, timeout=30
    ).stdout


def speak(text: str, voice: str = MALE) -> NDArray[np.float32]:
    from scipy.signal import resample_poly

    with wave.open(io.BytesIO(_speak(text, voice))) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    # espeak pads its output with a little silence: trim so the speech spans are exact
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


def with_gaps(
    parts: list[NDArray[np.float32]], gap_s: float, lead_s: float = 1.0
) -> tuple[NDArray[np.float32], list[tuple[float, float]]]:
    """Concatenate speech parts with silences between them; returns audio and the speech spans."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    pieces = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    spans = []
    position = pieces[0].size
    for part in parts:
        spans.append((position / SAMPLE_RATE, (position + part.size) / SAMPLE_RATE))
        pieces += [part, gap]
        position += part.size + gap.size
    return np.concatenate(pieces), spans
