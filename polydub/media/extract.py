"""Extract audio from validated user media: 16 kHz mono float32 for the models, and the original
mix as a float WAV (48 kHz stereo by default) for the background of the dub.

``extract_audio`` makes both from one decode (what the worker runs); each alone is also here.
All decode only the chosen audio stream (``audio_index``: the n-th audio stream, as in
``MediaInfo.audio``) and, when given, only ``[start, end)`` seconds of it, seeking accurately.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from polydub.serving.names import SAMPLE_RATE

from .pcm import wav_info
from .runner import file_input, file_url, pcm_output, run_ffmpeg

MIX_SAMPLE_RATE = 48000


@dataclass(frozen=True)
class ExtractedWav:
    path: Path
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def decode_timeout(seconds: float) -> float:
    """A generous bound for decoding ``seconds`` of media (decoding runs far faster than realtime)."""
    return 60.0 + 0.5 * seconds


def _range_options(start: float | None, end: float | None, media_duration: float) -> list[str]:
    # Output never runs past the probed duration: a file whose streams decode to more than its
    # header claims cannot produce more audio than the limits allowed (and the AAC padding of
    # the last frame is dropped).
    begin = start or 0.0
    stop = media_duration if end is None else min(end, media_duration)
    if begin < 0:
        raise ValueError("start must be >= 0")
    if stop <= begin:
        raise ValueError("end must be after start, inside the media")
    options = ["-ss", f"{begin:.6f}"] if begin else []
    return [*options, "-t", f"{stop - begin:.6f}"]


def extract_model_audio(
    path: str | os.PathLike[str],
    *,
    start: float | None = None,
    end: float | None = None,
    audio_index: int = 0,
    sample_rate: int = SAMPLE_RATE,
    media_duration: float,
) -> NDArray[np.float32]:
    """Mono float32 samples at ``sample_rate`` (16 kHz for Whisper, VAD and diarization).

    ``media_duration`` is the probed ``MediaInfo.audio_duration``: output stops there. The down-mix
    is ffmpeg's standard one (each stereo channel at -3 dB, 5.1 folded properly), exactly what
    Whisper's own ``ffmpeg -ac 1`` loader feeds the model.
    """
    out = run_ffmpeg(
        [
            *file_input(path, options=_range_options(start, end, media_duration)),
            "-map", f"0:a:{audio_index}", "-vn", "-sn", "-dn",
            *pcm_output(sample_rate, 1),
        ],
        timeout=decode_timeout(media_duration),
        blame="input",
        what="extract audio",
    ).stdout  # fmt: skip
    return np.frombuffer(out, dtype="<f4").astype(np.float32)


def extract_mix_wav(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    start: float | None = None,
    end: float | None = None,
    audio_index: int = 0,
    sample_rate: int = MIX_SAMPLE_RATE,
    channels: int = 2,
    media_duration: float,
) -> ExtractedWav:
    """The original audio as a 32-bit float WAV (the background the dub is mixed over).

    ``media_duration`` is the probed ``MediaInfo.audio_duration``: output stops there, which also
    drops the encoder's padding of the last frame (up to ~21 ms of AAC) that the decoder returns
    and the mux would otherwise carry into the dubbed file.
    """
    target = Path(out_path)
    run_ffmpeg(
        [
            *file_input(path, options=_range_options(start, end, media_duration)),
            *_mix_wav_output(target, audio_index, sample_rate, channels),
        ],
        timeout=decode_timeout(media_duration),
        blame="input",
        what="extract mix",
    )  # fmt: skip
    info = wav_info(target)
    return ExtractedWav(target, info.sample_rate, info.channels, info.frames)


def extract_audio(
    path: str | os.PathLike[str],
    mix_path: str | os.PathLike[str],
    *,
    start: float | None = None,
    end: float | None = None,
    audio_index: int = 0,
    sample_rate: int = SAMPLE_RATE,
    mix_sample_rate: int = MIX_SAMPLE_RATE,
    mix_channels: int = 2,
    media_duration: float,
) -> tuple[NDArray[np.float32], ExtractedWav]:
    """``extract_model_audio`` and ``extract_mix_wav`` from one ffmpeg run: the media is demuxed
    and decoded once, and each output gets its own down-mix and resampler (the same samples as
    the two functions give alone)."""
    target = Path(mix_path)
    out = run_ffmpeg(
        [
            *file_input(path, options=_range_options(start, end, media_duration)),
            *_mix_wav_output(target, audio_index, mix_sample_rate, mix_channels),
            "-map", f"0:a:{audio_index}", "-vn", "-sn", "-dn",
            *pcm_output(sample_rate, 1),
        ],
        timeout=decode_timeout(media_duration),
        blame="input",
        what="extract audio",
    ).stdout  # fmt: skip
    info = wav_info(target)
    mixed = ExtractedWav(target, info.sample_rate, info.channels, info.frames)
    return np.frombuffer(out, dtype="<f4").astype(np.float32), mixed


def _mix_wav_output(target: Path, audio_index: int, sample_rate: int, channels: int) -> list[str]:
    return [
        "-map", f"0:a:{audio_index}", "-vn", "-sn", "-dn", "-map_metadata", "-1",
        "-ac", str(channels), "-ar", str(sample_rate), "-c:a", "pcm_f32le",
        "-f", "wav", "-rf64", "never", file_url(target),
    ]  # fmt: skip
