"""Memory between an export's phases: what the export's peak is made of decides the machine it
needs (``bench.large_size``: the ``large`` preset needs more than 24 GB to export)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import resource
from typing import Any

log = logging.getLogger(__name__)


def release_memory(family: str, phase: str) -> None:
    """Hand freed heap memory back to the system after ``phase`` and log the peak so far.

    Each phase builds onnxruntime sessions and ONNX protos of the whole checkpoint, and glibc
    keeps freed chunks in its arenas: without the trim, the phases' peaks added up."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    log.info("%s export: %s; peak RSS so far %.1f GiB", family, phase, peak / 2**30)


def free_weights(model: Any) -> None:
    """Free a torch model's parameters and buffers in place, for every holder of the model:
    once its graphs are written and checked, an export no longer reads them (13 GB of float32
    at NLLB-3.3B, 6 GB at Whisper large-v3). The model is unusable afterwards."""
    model.to("meta")
