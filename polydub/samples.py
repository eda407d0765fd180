"""Small real media made on the fly with ffmpeg and espeak-ng: the demo sample and test media.

``make_sample`` is the clip ``polydub sample make`` writes for the README's first command;
``make_video`` makes a test-pattern video (optionally with a tone or given audio);
``make_two_speaker_clip`` makes a clip where two espeak-ng voices of different genders (``en+m3``
and ``en+f3``) take turns over a quiet background, and returns the exact turns.
Everything is deterministic: same arguments, same samples. The test suite's ``tests/media.py``
re-exports these functions.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from polydub.media.pcm import read_wav, write_wav
from polydub.media.runner import run_ffmpeg
from polydub.settings import get_settings

MALE_VOICE = "en+m3"
FEMALE_VOICE = "en+f3"

# Codecs per container for generated video: fast to encode, and what real uploads carry.
_VIDEO_CODECS = {
    ".mp4": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".webm": ("libvpx-vp9", "libopus"),
    ".avi": ("mpeg4", "libmp3lame"),
}
_AUDIO_CODECS = {".wav": "pcm_s16le", ".mp3": "libmp3lame", ".flac": "flac", ".ogg": "libvorbis",
                 ".m4a": "aac"}  # fmt: skip

DEFAULT_TURNS = (
    ("A", MALE_VOICE, "Hello, my name is Peter and I like old trains."),
    ("B", FEMALE_VOICE, "Nice to meet you, Peter. I prefer boats."),
    ("A", MALE_VOICE, "Boats are slow, but the sea is beautiful."),
    ("B", FEMALE_VOICE, "Exactly, and nobody is ever in a hurry there."),
)


@dataclass(frozen=True)
class Turn:
    speaker: str
    voice: str
    text: str
    start: float  # seconds, where the voiced speech starts
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Clip:
    path: Path
    duration: float
    sample_rate: int
    turns: tuple[Turn, ...]

    @property
    def speakers(self) -> set[str]:
        return {t.speaker for t in self.turns}


def _ffmpeg(*args: str) -> None:
    run_ffmpeg(list(args), timeout=120, blame="internal", what="make sample media")


def espeak(text: str, voice: str = MALE_VOICE, *, speed: int = 165,
           sample_rate: int = 48000) -> NDArray[np.float32]:  # fmt: skip
    """Mono float32 speech at ``sample_rate``, leading and trailing silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text],
                       check=True, timeout=60)  # fmt: skip
        samples, rate = read_wav(wav)
    mono = samples[:, 0]
    voiced = np.flatnonzero(np.abs(mono) > 1e-3)
    mono = mono[voiced[0] : voiced[-1] + 1] if len(voiced) else mono[:0]
    return resample(mono, rate, sample_rate)


def resample(x: NDArray[np.float32], rate: int, target: int) -> NDArray[np.float32]:
    """Linear-interpolation resampling: good enough for test speech, and exact to reproduce."""
    if rate == target or len(x) == 0:
        return np.asarray(x, np.float32)
    n = round(len(x) * target / rate)
    return np.interp(np.arange(n) * (rate / target), np.arange(len(x)), x).astype(np.float32)


def tone(seconds: float, frequency: float = 220.0, *, sample_rate: int = 48000,
         amplitude: float = 0.3) -> NDArray[np.float32]:  # fmt: skip
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave: NDArray[np.float32] = (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return wave


def background(seconds: float, *, sample_rate: int = 48000, level_db: float = -30.0,
               seed: int = 7) -> NDArray[np.float32]:  # fmt: skip
    """Quiet, deterministic 'music': a soft chord over low noise, ``level_db`` RMS."""
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    chord = sum(np.sin(2 * np.pi * f * t) for f in (110.0, 138.6, 164.8))
    noise = np.random.default_rng(seed).standard_normal(n) * 0.3
    signal = np.asarray(chord + noise, np.float64)
    signal *= 10 ** (level_db / 20) / np.sqrt(np.mean(signal**2))
    return signal.astype(np.float32)


def make_audio(path: str | Path, samples: NDArray[np.float32], sample_rate: int = 48000) -> Path:
    """Write samples to ``path`` in the format its suffix names (wav, mp3, flac, ogg, m4a)."""
    target = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "a.wav", samples, sample_rate)
        codec = _AUDIO_CODECS[target.suffix]
        _ffmpeg("-i", str(wav), "-c:a", codec, str(target))
    return target


def make_video(
    path: str | Path,
    seconds: float,
    *,
    with_audio: bool = True,
    audio: NDArray[np.float32] | None = None,
    sample_rate: int = 48000,
    size: str = "160x120",
    fps: int = 25,
    video_codec: str | None = None,
    crf: int | None = None,
) -> Path:
    """A test-pattern video of ``seconds``; the audio is ``audio`` (mono or (frames, channels)) or
    a 440 Hz tone. Container and codecs follow the suffix (mp4, mov, mkv, webm, avi); ``crf``
    trades encoding speed for size (H.264 only)."""
    target = Path(path)
    vcodec, acodec = _VIDEO_CODECS[target.suffix]
    vcodec = video_codec or vcodec
    speed = ["-preset", "ultrafast"] if vcodec == "libx264" else []
    if crf is not None and vcodec == "libx264":
        speed = ["-preset", "veryfast", "-crf", str(crf)]  # smaller file, still fast
    if vcodec.startswith("libvpx"):
        speed = ["-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k"]
    with tempfile.TemporaryDirectory() as tmp:
        inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
        if with_audio:
            samples = audio if audio is not None else tone(seconds, 440.0, sample_rate=sample_rate)
            wav = write_wav(Path(tmp) / "a.wav", samples, sample_rate)
            inputs += ["-i", str(wav)]
        codecs = ["-c:v", vcodec, *speed, "-pix_fmt", "yuv420p", "-g", str(fps)]
        if with_audio:
            codecs += ["-c:a", acodec, "-ar", str(sample_rate)]
        _ffmpeg(*inputs, *codecs, "-t", f"{seconds}", str(target))
    return target


def make_two_speaker_clip(
    path: str | Path,
    *,
    seconds: float = 15.0,
    turns: tuple[tuple[str, str, str], ...] = DEFAULT_TURNS,
    first_start: float = 0.5,
    gap: float = 0.7,
    background_db: float = -30.0,
    with_video: bool = True,
    sample_rate: int = 48000,
    size: str = "160x120",
    crf: int | None = None,
) -> Clip:
    """Two speakers taking turns (``gap`` seconds between turns) over a quiet background.

    Turns that do not fit in ``seconds`` are dropped. Returns the exact turn times.
    """
    track = background(seconds, sample_rate=sample_rate, level_db=background_db)
    placed: list[Turn] = []
    cursor = first_start
    for speaker, voice, text in turns:
        speech = espeak(text, voice, sample_rate=sample_rate)
        begin = round(cursor * sample_rate)
        if begin + len(speech) > len(track):
            break
        track[begin : begin + len(speech)] += 0.8 * speech
        start = begin / sample_rate
        placed.append(Turn(speaker, voice, text, start, start + len(speech) / sample_rate))
        cursor = placed[-1].end + gap
    target = Path(path)
    if with_video:
        make_video(target, seconds, audio=track, sample_rate=sample_rate, size=size,
                   crf=crf)  # fmt: skip
    else:
        make_audio(target, track, sample_rate)
    return Clip(target, seconds, sample_rate, tuple(placed))


# The sample: four turns of two voices, small enough to ship in a bug report. The pauses between
# turns are long enough for voice activity detection to keep the turns apart, and 12 s gives
# diarization two of its 10 s windows (every 5 s).
SAMPLE_SECONDS = 12.0
SAMPLE_SIZE = "320x180"
SAMPLE_GAP = 0.8
SAMPLE_TURNS = (
    ("A", MALE_VOICE, "Hello, I am Peter and I like old trains."),
    ("B", FEMALE_VOICE, "Nice to meet you. I prefer boats."),
    ("A", MALE_VOICE, "Boats are slow, but the sea is nice."),
    ("B", FEMALE_VOICE, "And nobody is in a hurry."),
)


def make_sample(path: str | Path, *, seconds: float = SAMPLE_SECONDS) -> Clip:
    """The demo clip: two espeak-ng voices (en+m3, en+f3) taking turns over a quiet background,
    on a test-pattern video; 12 s and a few hundred KB."""
    tools = (get_settings().ffmpeg, "espeak-ng")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise FileNotFoundError(
            f"{' and '.join(missing)} not found: install the Debian packages (scripts/bootstrap.sh)"
        )
    target = Path(path)
    if target.suffix not in _VIDEO_CODECS:
        raise ValueError(f"a sample is a video: use one of {', '.join(sorted(_VIDEO_CODECS))}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return make_two_speaker_clip(target, seconds=seconds, turns=SAMPLE_TURNS, first_start=0.4,
                                 gap=SAMPLE_GAP, size=SAMPLE_SIZE, crf=30)  # fmt: skip
