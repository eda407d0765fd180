"""A whole polydub deployment on 127.0.0.1 for load and fault runs: servers, API, workers.

The servers (PostgreSQL, NATS, S3, Triton) come from ``polydub.stack`` on free ports; the API
and the workers are real subprocesses (``polydub api serve``, ``polydub worker run``) configured
only through ``POLYDUB_*`` variables, exactly as a deployment runs them, so a test can kill -9,
SIGSTOP or restart any one of them. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from polydub.settings import Settings
from polydub.stack import Stack
from polydub.stack.isolated import isolated_settings
from polydub.stack.servers import settings_env

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("postgres", "nats", "s3", "triton")
EXPORTED_MARKER = ".polydub-tiny-exported"


def local_settings(root: Path, model_repository: Path, **overrides: object) -> Settings:
    """Settings whose every address is a free port on 127.0.0.1, data under ``root``; many
    workers on one host: no metrics port each."""
    values: dict[str, object] = {"model_repository": model_repository, "worker_metrics_port": 0}
    return isolated_settings(root, **{**values, **overrides})


def model_names(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").exists())


def export_fingerprint() -> str:
    """A digest of what the tiny export depends on: the exporters and the committed configs."""
    digest = hashlib.sha256()
    for folder, patterns in (
        (ROOT / "export", ("*.py",)),
        (ROOT / "serving", ("*.py",)),
        (ROOT / "model_repository", ("*.pbtxt", "*.py")),
    ):
        for pattern in patterns:
            for path in sorted(folder.rglob(pattern)):
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_tiny_models(repository: Path) -> list[str]:
    """Export every family with the tiny preset into ``repository``, again whenever the
    exporters or the committed configs changed since the last export there."""
    marker = repository / EXPORTED_MARKER
    fingerprint = export_fingerprint()
    if not marker.exists() or marker.read_text().strip() != fingerprint:
        from polydub.export.run import export_preset
        from polydub.export.spec import Preset, Target

        if repository.exists() and any(repository.iterdir()):
            if not marker.exists():  # never wipe a repository this harness did not write
                raise RuntimeError(f"{repository} is not a tiny-model cache of the load harness")
            shutil.rmtree(repository)
        repository.mkdir(parents=True)
        export_preset(Preset.TINY, Target.CPU, repository, templates=ROOT / "model_repository")
        marker.write_text(fingerprint + "\n")
    return model_names(repository)


@dataclass
class Proc:
    """A polydub subprocess in its own session (so its children can be signalled with it)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill9(self) -> None:
        """SIGKILL the process itself only, as a crash would (no drain, no nak)."""
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a drain), then SIGKILL the whole group if it is still there."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self) -> list[dict[str, object]]:
        """The JSON log lines (polydub logs one object a line)."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records


@dataclass
class Deployment:
    """Servers from ``polydub.stack`` plus API and worker subprocesses on the same Settings."""

    settings: Settings
    logs: Path
    stack: Stack | None = None
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLYDUB_")}
        env.update(settings_env(self.settings))
        env["POLYDUB_LOG_JSON"] = "true"
        env["PYTHONUNBUFFERED"] = "1"
        env["TMPDIR"] = str(self.scratch)
        return env

    @property
    def scratch(self) -> Path:
        """Scratch of the API and the workers (spools, job folders) beside the logs: a worker
        killed -9 leaves its job folder behind, and this deployment's folder takes it away."""
        return self.logs.parent / "tmp"

    def up_servers(self, names: tuple[str, ...] = SERVERS) -> None:
        self.stack = Stack(self.settings, only=list(names))
        self.stack.up()

    def server(self, name: str) -> object:
        assert self.stack is not None
        return next(s for s in self.stack.servers if s.name == name)

    def restart_server(self, name: str, down_seconds: float = 0.0) -> float:
        """Stop one server (SIGTERM to its group), wait, bring it back; seconds it was away."""
        assert self.stack is not None
        started = time.monotonic()
        self.stack.process(self.server(name)).stop()  # type: ignore[arg-type]
        time.sleep(down_seconds)
        Stack(self.settings, only=[name]).up()
        return time.monotonic() - started

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "polydub.cli", *argv],
                env={**self.env(), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_api(self, *, processes: int = 1, env: dict[str, str] | None = None) -> Proc:
        """``env`` overrides the deployment's settings for this API only."""
        return self._spawn(
            "api",
            ["api", "serve", "--port", str(self.settings.api_port), "--workers", str(processes)],
            env,
        )

    def start_worker(
        self,
        name: str,
        *,
        concurrency: int = 2,
        ack_wait: float | None = None,
        max_deliver: int | None = None,
        retry_delay: float | None = None,
        drain_seconds: float = 5.0,
    ) -> Proc:
        argv = ["worker", "run", "--concurrency", str(concurrency)]
        argv += ["--drain-seconds", str(drain_seconds)]
        if ack_wait is not None:
            argv += ["--ack-wait", str(ack_wait)]
        if max_deliver is not None:
            argv += ["--max-deliver", str(max_deliver)]
        if retry_delay is not None:
            argv += ["--retry-delay", str(retry_delay)]
        return self._spawn(name, argv)

    def start_app(
        self, *, workers: int, concurrency: int = 2, api_processes: int = 1
    ) -> tuple[Proc, list[Proc]]:
        """The API and ``workers`` worker processes, returned once all of them serve."""
        api = self.start_api(processes=api_processes)
        started = [
            self.start_worker(f"worker-{i}", concurrency=concurrency) for i in range(workers)
        ]
        self.wait_api(api)
        for proc in started:
            self.wait_worker(proc)
        return api, started

    def wait_api(self, proc: Proc, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"the API exited:\n{proc.log_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health/live", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer within {timeout} s:\n{proc.log_text()[-3000:]}")

    @staticmethod
    def wait_worker(proc: Proc, timeout: float = 60.0) -> None:
        """Until the worker logs that it consumes (its stream and consumer exist by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"worker {proc.name} exited:\n{proc.log_text()[-3000:]}")
            if "worker started" in proc.log_text():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker {proc.name} did not start within {timeout} s")

    def stop_procs(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def down(self) -> None:
        self.stop_procs()
        if self.stack is not None:
            self.stack.down()


@contextlib.contextmanager
def deployment(
    root: Path | None = None,
    model_repository: Path | None = None,
    *,
    servers: tuple[str, ...] = SERVERS,
    startup_models: list[str] | None = None,
    **overrides: object,
) -> Iterator[Deployment]:
    """A fresh stack that is always taken down. Triton loads ``startup_models`` at start (so a
    restarted Triton serves them again); by default the tiny models, exported once into
    ``model_repository``. A folder made here (data and logs) is removed afterwards unless the
    body failed: then its path is printed and it stays for reading."""
    made_here = root is None
    root = root or Path(tempfile.mkdtemp(prefix="polydub-load-"))
    repository = model_repository or root / "model_repository"
    names = startup_models
    if names is None:
        names = ensure_tiny_models(repository) if "triton" in servers else []
    overrides.setdefault("triton_startup_models", tuple(names))
    settings = local_settings(root, repository, **overrides)
    deploy = Deployment(settings, root / "logs")
    finished = False
    try:
        deploy.up_servers(servers)
        yield deploy
        finished = True
    finally:
        deploy.down()
        if made_here and finished:
            shutil.rmtree(root, ignore_errors=True)
        elif made_here:
            print(f"the deployment's data and logs are kept in {root}", file=sys.stderr)
