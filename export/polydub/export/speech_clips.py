"""Spoken English made at export time with espeak-ng, for checks that should judge speech.

Tones and noise exercise a graph's arithmetic, but what a quantized speech model gets wrong shows
on speech: an ASR encoder's activations on words differ in scale and structure from a tone's.
espeak-ng is a Debian package (``apt-get install espeak-ng``); where it is absent, ``speech``
returns None and callers fall back to their synthetic signals, saying so in a note.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from polydub.serving.names import SAMPLE_RATE

VOICES = ("en+m3", "en+f3")  # a lower and a higher voice, alternated sentence by sentence
SENTENCES = (
    "Hello, my name is Peter and I like old trains.",
    "The weather is lovely today, so we will walk to the river.",
    "Please send the report to my office before Friday afternoon.",
    "She bought three apples, two oranges and a loaf of bread.",
    "The meeting has been moved to half past ten tomorrow morning.",
    "My brother lives in a small house near the sea.",
    "Could you tell me where the train station is?",
    "We watched a funny film about a dog who could talk.",
    "The children played football in the park until it got dark.",
    "I have never seen so many stars in the night sky.",
    "The doctor said I should drink more water and sleep longer.",
    "Our flight to London leaves at seven in the evening.",
    "He forgot his umbrella and came home completely wet.",
    "The new library opens next week in the centre of town.",
    "Turn left at the bridge and the shop is on your right.",
    "This coffee is too hot to drink right now.",
    "They are building a new school next to the hospital.",
    "I will call you as soon as I arrive at the hotel.",
    "The garden is full of red roses and yellow tulips.",
    "Do not forget to lock the door when you leave.",
    "The price of bread has gone up again this year.",
    "My grandmother tells the best stories about her childhood.",
    "We need four chairs and a large table for the party.",
    "The museum is closed on Mondays and public holidays.",
    "Can you help me carry these boxes upstairs?",
    "The cat is sleeping on the warm kitchen floor.",
    "Music helps me relax after a long day at work.",
    "The train was late because of the heavy snow.",
    "Please speak slowly, I am still learning English.",
    "Every morning she runs five kilometres before breakfast.",
    "The river flows through the valley and into the lake.",
    "I would like a cup of tea with milk, please.",
)


def available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=64)
def _wav(text: str, voice: str) -> bytes:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FileNotFoundError("espeak-ng")
    return subprocess.run(
        [binary, "-v", voice, "--stdout", text], check=True, capture_output=True, timeout=60
    ).stdout


def resample(audio: NDArray[np.float32], rate: int) -> NDArray[np.float32]:
    """Band-limited resampling to 16 kHz through the spectrum (numpy only; clips are short)."""
    if rate == SAMPLE_RATE:
        return audio
    n = round(audio.size * SAMPLE_RATE / rate)
    spectrum = np.fft.rfft(audio.astype(np.float64))[: n // 2 + 1]
    out: NDArray[np.float32] = (np.fft.irfft(spectrum, n) * (n / audio.size)).astype(np.float32)
    return out


def speak(text: str, voice: str = VOICES[0]) -> NDArray[np.float32]:
    """One sentence as 16 kHz mono float32, with half a second of silence on either side."""
    with wave.open(io.BytesIO(_wav(text, voice))) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    audio = resample(pcm.astype(np.float32) / 32768.0, rate)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    if loud.size:
        audio = audio[loud[0] : loud[-1] + 1]
    pad = np.zeros(SAMPLE_RATE // 2, np.float32)
    return np.concatenate([pad, audio, pad])


def speech(count: int, start: int = 0) -> list[tuple[str, NDArray[np.float32]]] | None:
    """``count`` (sentence, audio) pairs from ``SENTENCES[start:]`` (wrapping around), voices
    alternating; None where espeak-ng is not installed."""
    if not available():
        return None
    picked: Sequence[int] = [(start + k) % len(SENTENCES) for k in range(count)]
    return [(SENTENCES[i], speak(SENTENCES[i], VOICES[i % len(VOICES)])) for i in picked]
