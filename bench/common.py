"""What the benchmarks share: a private stack on free ports, tiny models loaded, results saved."""

from __future__ import annotations

import json
import platform
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polydub.settings import Settings
from polydub.stack import Stack

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def private_stack(servers: list[str]) -> Iterator[Settings]:
    root = Path(tempfile.mkdtemp(prefix="polydub-bench-"))
    root.chmod(0o755)
    settings = Settings(
        stack_dir=root,
        postgres_port=free_port(),
        nats_port=free_port(),
        nats_monitor_port=free_port(),
        s3_port=free_port(),
        triton_http_port=free_port(),
        triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        model_repository=root / "model_repository",
        worker_metrics_port=free_port(),
    )
    settings.model_repository.mkdir()
    stack = Stack(settings, only=servers)
    try:
        stack.up()
        yield settings
    finally:
        stack.down()


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        **data,
    }
    path.write_text(json.dumps(data, indent=2))
    return path
