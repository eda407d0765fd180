"""The ``fake_hub`` pytest fixture: every ``small``-preset repository built once per session (scale
``ci``) and served on loopback. Use it from a test module with::

    from tests.hub import fixtures
    from tests.hub.fixtures import FakeHub

    fake_hub = fixtures.fake_hub  # pytest finds fixtures by their name in the test module

    def test_x(fake_hub: FakeHub, tmp_path: Path) -> None:
        subprocess.run([...], env=fake_hub.env(tmp_path), check=True)

``env`` points a fresh process at the server: huggingface_hub reads ``HF_ENDPOINT`` once, at import,
so a process that imported it before cannot be redirected; in-process code can instead pass
``endpoint=fake_hub.url`` to huggingface_hub's functions (``hf_hub_download``, ``HfApi``).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hub.build import build_all
from tests.hub.server import DEFAULT_TOKEN, FakeHubServer

# Variables that would send a child process elsewhere or keep it offline.
_CLEARED = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HF_ENDPOINT",
    "HF_TOKEN",
)


@dataclass(frozen=True)
class FakeHub:
    url: str
    root: Path  # root/<org>/<name>/ per repository
    token: str  # accepted for the gated repositories
    server: FakeHubServer

    def commit(self, repo_id: str) -> str:
        return self.server.repos[repo_id].commit

    def env(self, home: Path, token: str | None = DEFAULT_TOKEN) -> dict[str, str]:
        """A child process's environment: this Hub, an empty cache and HF home under ``home``
        (so no token stored on the machine is sent), ``HF_TOKEN`` unless ``token`` is None."""
        env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
        env |= {
            "HF_ENDPOINT": self.url,
            "HF_HOME": str(home / "hf-home"),
            "HF_HUB_CACHE": str(home / "hf-cache"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
        if token is not None:
            env["HF_TOKEN"] = token
        return env


@functools.cache
def session_hub() -> FakeHub:
    """Built and started once per test process, however many modules use ``fake_hub`` (each
    module importing the fixture gets its own session-scoped definition of it)."""
    root = Path(tempfile.mkdtemp(prefix="polydub-fake-hub-"))
    build_all(root, "ci")
    server = FakeHubServer(root).start()
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    atexit.register(server.close)  # atexit runs last-registered first: close, then remove
    return FakeHub(server.url, root, DEFAULT_TOKEN, server)


@pytest.fixture(scope="session")
def fake_hub() -> FakeHub:
    return session_hub()
