"""A reader of CTranslate2's ``model.bin``, so a CTranslate2 checkpoint can be turned back into
framework weights without CTranslate2 itself.

The layout is the one ``ctranslate2.specs.model_spec.ModelSpec`` writes (binary version 6), all
integers little-endian, strings as a uint16 byte count (terminating NUL included) then the bytes:

    uint32 binary version | string spec name | uint32 spec revision | uint32 variable count
    per variable:  string name | uint8 rank | uint32 x rank dims | uint8 dtype id
                   | uint32 byte count | the bytes (row-major)
    uint32 alias count | per alias: string alias | string name of the variable it stands for

Aliases are variables equal to another one (e.g. a tied output projection), stored once.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from polydub.errors import ConfigurationError

__all__ = ["BINARY_VERSION", "Ct2Model", "read_ct2_model"]

BINARY_VERSION = 6  # the only layout this reader knows; older files are refused, not guessed
# dtype id -> numpy dtype; bfloat16 (id 5) has no numpy type: read as uint16, widened below
_DTYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BFLOAT16 = 5


class Ct2Model(NamedTuple):
    spec_name: str
    variables: dict[str, NDArray[Any]]  # read-only views of the mapped file, bfloat16 as float32
    aliases: dict[str, str]  # alias -> the name of the variable it stands for


class _Cursor:
    """Reads the fields in order; every read past the end is a clear error, not an IndexError."""

    def __init__(self, buffer: mmap.mmap | bytes, path: Path) -> None:
        self.buffer = buffer
        self.size = len(buffer)
        self.offset = 0
        self.path = path

    def fail(self, what: str) -> ConfigurationError:
        return ConfigurationError(
            f"{self.path} is not a valid CTranslate2 model.bin: {what} (at byte {self.offset} "
            f"of {self.size}); re-create or re-install the model",
            code="ct2_model_invalid",
        )

    def take(self, count: int, what: str) -> int:
        if self.offset + count > self.size:
            raise self.fail(f"truncated inside {what} ({count} bytes needed)")
        start = self.offset
        self.offset += count
        return start

    def uint(self, fmt: str, what: str) -> int:
        start = self.take(struct.calcsize(fmt), what)
        value: int = struct.unpack_from(fmt, self.buffer, start)[0]
        return value

    def string(self, what: str) -> str:
        length = self.uint("<H", what)
        start = self.take(length, what)
        raw = bytes(self.buffer[start : start + length])
        if length == 0 or raw[-1] != 0:
            raise self.fail(f"{what} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8") from exc


def read_ct2_model(path: str | Path) -> Ct2Model:
    """(spec name, variables by name, aliases) of a CTranslate2 ``model.bin`` (or its folder).

    The file is memory-mapped: the arrays are read-only views, so reading a large model costs
    no copy until a caller converts a tensor.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    with path.open("rb") as handle:
        if handle.seek(0, 2) == 0:
            raise ConfigurationError(f"{path} is empty", code="ct2_model_invalid")
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    cursor = _Cursor(buffer, path)
    version = cursor.uint("<I", "the binary version")
    if version != BINARY_VERSION:
        raise cursor.fail(f"binary version {version}, this reader knows {BINARY_VERSION}")
    spec_name = cursor.string("the spec name")
    cursor.uint("<I", "the spec revision")
    variables: dict[str, NDArray[Any]] = {}
    for index in range(cursor.uint("<I", "the variable count")):
        name = cursor.string(f"the name of variable {index}")
        variables[name] = _read_variable(cursor, name)
    aliases: dict[str, str] = {}
    for _ in range(cursor.uint("<I", "the alias count")):
        alias = cursor.string("an alias name")
        target = cursor.string(f"the target of alias {alias}")
        if target not in variables:
            raise cursor.fail(f"alias {alias} names a missing variable {target}")
        aliases[alias] = target
    if cursor.offset != cursor.size:
        raise cursor.fail(f"{cursor.size - cursor.offset} unexpected bytes after the aliases")
    return Ct2Model(spec_name, variables, aliases)


def _read_variable(cursor: _Cursor, name: str) -> NDArray[Any]:
    rank = cursor.uint("<B", f"the rank of {name}")
    shape = tuple(cursor.uint("<I", f"the shape of {name}") for _ in range(rank))
    type_id = cursor.uint("<B", f"the dtype of {name}")
    dtype = _DTYPES.get(type_id)
    if dtype is None:
        raise cursor.fail(f"variable {name} has an unknown dtype id {type_id}")
    num_bytes = cursor.uint("<I", f"the byte count of {name}")
    if num_bytes != math.prod(shape) * dtype.itemsize:
        raise cursor.fail(f"variable {name}: {num_bytes} bytes for shape {shape} of {dtype}")
    start = cursor.take(num_bytes, f"the data of {name}")
    array = np.frombuffer(cursor.buffer, dtype, math.prod(shape), start).reshape(shape)
    if type_id == _BFLOAT16:
        # bfloat16 is the upper half of a float32: widening is exact
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array
