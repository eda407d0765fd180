import struct
from pathlib import Path

import numpy as np
import pytest

from polydub.errors import InvalidInput
from polydub.media.pcm import create_wav, read_wav, wav_info, write_wav

pytestmark = pytest.mark.unit


def test_float_wav_round_trip_is_exact(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (1001, 2)).astype(np.float32)
    write_wav(tmp_path / "a.wav", x, 48000)
    info = wav_info(tmp_path / "a.wav")
    assert (info.sample_rate, info.channels, info.frames, info.format_tag, info.bits) == (
        48000, 2, 1001, 3, 32,
    )  # fmt: skip
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 48000 and np.array_equal(x, y)
    mapped, _ = read_wav(tmp_path / "a.wav", mmap=True)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, x)
    mono, _ = read_wav(write_wav(tmp_path / "m.wav", x[:, 0], 16000))
    assert mono.shape == (1001, 1)


def test_create_wav_maps_a_writable_file(tmp_path: Path) -> None:
    out = create_wav(tmp_path / "c.wav", 10, 2, 8000)
    out[3:5] = 0.5
    out.flush()
    del out
    y, rate = read_wav(tmp_path / "c.wav")
    assert rate == 8000 and y.shape == (10, 2) and y.sum() == 2.0


def _int_wav(path: Path, data: bytes, bits: int, rate: int = 8000, channels: int = 1) -> Path:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk with its pad byte
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_integer_wavs(tmp_path: Path) -> None:
    s16 = np.array([0, 16384, -32768], "<i2").tobytes()
    y, _ = read_wav(_int_wav(tmp_path / "16.wav", s16, 16))
    assert y[:, 0].tolist() == [0.0, 0.5, -1.0]
    u8 = bytes([128, 192, 0])
    y, _ = read_wav(_int_wav(tmp_path / "8.wav", u8, 8))
    assert y[:, 0].tolist() == [0.0, 0.5, -1.0]
    s24 = b"\x00\x00\x00" + b"\x00\x00\x40" + b"\x00\x00\x80"
    y, _ = read_wav(_int_wav(tmp_path / "24.wav", s24, 24))
    assert y[:, 0].tolist() == [0.0, 0.5, -1.0]


def test_not_a_wav(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_bytes(b"hello world, not a wav")
    with pytest.raises(InvalidInput) as err:
        read_wav(tmp_path / "x.wav")
    assert err.value.code == "unsupported_format"
    (tmp_path / "y.wav").write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(InvalidInput) as err:
        read_wav(tmp_path / "y.wav")
    assert err.value.code == "corrupt_media"
