"""WAV files as numpy arrays, without ffmpeg: 32-bit float WAV for our intermediates.

Arrays are float32 shaped ``(frames, channels)``. ``read_wav(mmap=True)`` maps a float WAV
instead of loading it, and ``create_wav`` maps a new one for writing, so an hour of 48 kHz stereo
is processed in chunks without holding it in memory.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.errors import InvalidInput

Audio = NDArray[np.float32]

_PCM = 1
_FLOAT = 3
_EXTENSIBLE = 0xFFFE
_HEADER = 58  # RIFF(12) + fmt with cbSize(26) + fact(12) + data header(8)


@dataclass(frozen=True)
class WavInfo:
    sample_rate: int
    channels: int
    frames: int
    format_tag: int  # 1 integer PCM, 3 IEEE float
    bits: int
    data_offset: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def as_2d(samples: NDArray[Any]) -> Audio:
    """(frames,) or (frames, channels) as float32 (frames, channels)."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        return array[:, None]
    if array.ndim != 2:
        raise ValueError(f"audio must be 1-D or 2-D, got shape {array.shape}")
    return array


def _header(frames: int, channels: int, sample_rate: int) -> bytes:
    data_bytes = frames * channels * 4
    fmt = struct.pack(
        "<HHIIHHH", _FLOAT, channels, sample_rate, sample_rate * channels * 4, channels * 4, 32, 0
    )
    return b"".join(
        [
            b"RIFF", struct.pack("<I", _HEADER - 8 + data_bytes), b"WAVE",
            b"fmt ", struct.pack("<I", len(fmt)), fmt,
            b"fact", struct.pack("<II", 4, frames),
            b"data", struct.pack("<I", data_bytes),
        ]
    )  # fmt: skip


def write_wav(path: str | os.PathLike[str], samples: NDArray[Any], sample_rate: int) -> Path:
    """Write float32 samples ((frames,) or (frames, channels)) as a 32-bit float WAV."""
    data = np.ascontiguousarray(as_2d(samples), dtype="<f4")
    if data.nbytes >= 2**32 - _HEADER:
        raise ValueError("audio too long for a WAV file")
    target = Path(path)
    with open(target, "wb") as fh:
        fh.write(_header(data.shape[0], data.shape[1], sample_rate))
        fh.write(data.tobytes())
    return target


def create_wav(
    path: str | os.PathLike[str], frames: int, channels: int, sample_rate: int
) -> np.memmap[Any, np.dtype[np.float32]]:
    """Create a zero-filled float WAV and map its samples for writing, shape (frames, channels)."""
    target = Path(path)
    with open(target, "wb") as fh:
        fh.write(_header(frames, channels, sample_rate))
        fh.truncate(_HEADER + frames * channels * 4)
    return np.memmap(target, dtype="<f4", mode="r+", offset=_HEADER, shape=(frames, channels))


def wav_info(path: str | os.PathLike[str]) -> WavInfo:
    """Parse a RIFF/WAVE header: integer PCM (8/16/24/32-bit) or 32/64-bit float."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        riff = fh.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise InvalidInput("not a WAV file", code="unsupported_format")
        fmt: tuple[int, int, int, int] | None = None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise InvalidInput("WAV file has no data chunk", code="corrupt_media")
            chunk, length = head[:4], struct.unpack("<I", head[4:])[0]
            if chunk == b"fmt ":
                body = fh.read(length + (length & 1))
                tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                if tag == _EXTENSIBLE and len(body) >= 26:
                    tag = struct.unpack("<H", body[24:26])[0]  # first bytes of the sub-format GUID
                fmt = (tag, channels, rate, bits)
            elif chunk == b"data":
                if fmt is None:
                    raise InvalidInput("WAV data before its format", code="corrupt_media")
                tag, channels, rate, bits = fmt
                offset = fh.tell()
                # Streaming writers leave the size as 0 or 0xFFFFFFFF: the data runs to the end.
                available = size - offset
                data_len = available if length in (0, 0xFFFFFFFF) else min(length, available)
                if channels < 1 or rate < 1 or bits not in (8, 16, 24, 32, 64):
                    raise InvalidInput("unsupported WAV format", code="unsupported_format")
                frames = data_len // (channels * bits // 8)
                return WavInfo(rate, channels, frames, tag, bits, offset)
            else:
                fh.seek(length + (length & 1), os.SEEK_CUR)


def read_wav(path: str | os.PathLike[str], *, mmap: bool = False) -> tuple[Audio, int]:
    """Samples as float32 (frames, channels) in [-1, 1] and the sample rate.

    ``mmap=True`` maps a 32-bit float WAV read-only instead of loading it.
    """
    info = wav_info(path)
    shape = (info.frames, info.channels)
    count = info.frames * info.channels
    if info.format_tag == _FLOAT and info.bits == 32:
        if mmap:
            mapped = np.memmap(path, dtype="<f4", mode="r", offset=info.data_offset, shape=shape)
            return mapped, info.sample_rate
        raw = np.fromfile(path, dtype="<f4", count=count, offset=info.data_offset)
        return raw.astype(np.float32).reshape(shape), info.sample_rate
    if info.format_tag == _FLOAT and info.bits == 64:
        raw64 = np.fromfile(path, dtype="<f8", count=count, offset=info.data_offset)
        return raw64.astype(np.float32).reshape(shape), info.sample_rate
    if info.format_tag != _PCM:
        raise InvalidInput(
            f"unsupported WAV format tag {info.format_tag}", code="unsupported_format"
        )
    if info.bits == 8:
        u8 = np.fromfile(path, dtype=np.uint8, count=count, offset=info.data_offset)
        samples = (u8.astype(np.float32) - 128.0) / 128.0
    elif info.bits == 24:
        b = np.fromfile(path, dtype=np.uint8, count=count * 3, offset=info.data_offset)
        b = b.reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        samples = value.astype(np.float32) / float(1 << 23)
    else:
        dtype = {16: "<i2", 32: "<i4"}[info.bits]
        ints = np.fromfile(path, dtype=dtype, count=count, offset=info.data_offset)
        samples = ints.astype(np.float32) / float(1 << (info.bits - 1))
    return samples.reshape(shape), info.sample_rate
