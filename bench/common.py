"""What the benchmarks share: a private stack on free ports, tiny models loaded, results saved."""

from __future__ import annotations

import json
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polydub.settings import Settings
from polydub.stack import Stack
from polydub.stack.isolated import isolated_settings

RESULTS = Path(__file__).resolve().parent / "results"
# The checkout's configs and python models, which exports into fresh repositories copy.
TEMPLATES = Path(__file__).resolve().parents[1] / "model_repository"


@contextmanager
def private_stack(servers: list[str], model_repository: Path | None = None) -> Iterator[Settings]:
    """The servers on free ports; the model repository an empty one of its own, or
    ``model_repository`` (served as it is)."""
    root = Path(tempfile.mkdtemp(prefix="polydub-bench-"))
    if model_repository is None:
        settings = isolated_settings(root)
        settings.model_repository.mkdir()
    else:
        settings = isolated_settings(root, model_repository=model_repository.resolve())
    stack = Stack(settings, only=servers)
    # A SIGTERM (timeout, kill) must still take the servers down: they run in sessions of
    # their own and would outlive this process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        stack.up()
        yield settings
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        **data,
    }
    path.write_text(json.dumps(data, indent=2))
    return path
