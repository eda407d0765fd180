"""Settings for a stack of one's own: every server on a free loopback port, data under one folder.

Tests, benchmarks and load runs each start such a stack, so they never collide with a running
developer stack, with each other, or with another machine user.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from polydub.settings import Settings

_PORT_FIELDS = (
    "postgres_port", "nats_port", "nats_monitor_port", "s3_port", "triton_http_port",
    "triton_grpc_port", "triton_metrics_port", "api_port", "worker_metrics_port",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def isolated_settings(root: Path, **overrides: Any) -> Settings:
    """Settings with free ports and ``root`` as stack dir (and model repository under it)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # PostgreSQL runs as an unprivileged user under root and must traverse it
    values: dict[str, Any] = {name: free_port() for name in _PORT_FIELDS}
    values.update(stack_dir=root, model_repository=root / "model_repository")
    values.update(overrides)
    return Settings(**values)
