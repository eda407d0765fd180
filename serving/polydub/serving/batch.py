"""What a python model's work sees of Triton: each request's input arrays by name in, each
request's output arrays by name (or its failure) out.

The ``model.py`` files only move tensors between Triton and these types, so everything they run
is plain numpy code in this package, typed and tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Inputs = Mapping[str, NDArray[Any]]  # one request's input tensors (optional ones may be absent)
Outputs = dict[str, NDArray[Any]]


@dataclass(frozen=True)
class Failure:
    """A request that gets an error instead of outputs; the others of its batch still answer."""

    message: str
    invalid: bool = False  # the request's own fault (INVALID_ARG), not the model's
    cancelled: bool = False  # its client went away (Triton's CANCELLED), not a model error


Outcome = Outputs | Failure


class MissingExport(FileNotFoundError):
    """A file the export writes beside the model is missing: the model cannot load."""

    def __init__(self, path: object, family: str) -> None:
        super().__init__(f"{path} is missing: run `polydub models export` for the {family} family")


def parameters(config: Mapping[str, Any], defaults: Mapping[str, str]) -> dict[str, str]:
    """A model's string parameters: ``defaults`` overridden by those its config sets.

    ``config`` is the model configuration as Triton hands it to ``initialize`` (JSON). Keys the
    model does not know are kept (the python backend reads some of its own, such as
    EXECUTION_ENV_PATH); an empty value means the default."""
    given = config.get("parameters") or {}
    values = dict(defaults)
    for key, value in given.items():
        text = str(value.get("string_value", "")) if isinstance(value, Mapping) else ""
        if text:
            values[key] = text
    return values


def strings(array: NDArray[Any]) -> list[str]:
    """A BYTES tensor's values, flattened, as text."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]


def text_column(values: list[str], rows: int) -> NDArray[np.object_]:
    """[rows, 1] BYTES (UTF-8) for a per-row text output."""
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_).reshape(rows, 1)
