"""One Settings object for every tier, read from ``POLYDUB_*`` environment variables.

Service addresses default to the local stack's ports, so a developer machine and the test suite
need no configuration; production sets the ``*_url`` / ``*_dsn`` fields to real deployments.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POLYDUB_", extra="ignore", frozen=True)

    # Local stack: where its data lives and the port of each server (own ports, never defaults
    # that collide with a system PostgreSQL or NATS).
    stack_dir: Path = Path(".stack")
    postgres_port: int = 55432
    nats_port: int = 54222
    nats_monitor_port: int = 58222
    s3_port: int = 59000
    triton_http_port: int = 58000
    triton_grpc_port: int = 58001
    triton_metrics_port: int = 58002

    # Service addresses; empty means "the local stack's".
    postgres_dsn: str = ""
    nats_url: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = "polydub"
    s3_secret_key: str = "polydub-secret-key"
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    s3_bucket: str = "polydub"
    triton_url: str = ""
    # The address clients should use for presigned links when it differs from s3_endpoint
    # (e.g. a public hostname in front of MinIO).
    s3_public_endpoint: str = ""

    # Queue layout.
    jobs_stream: str = "JOBS"
    jobs_subject: str = "jobs.submitted"
    progress_subject_prefix: str = "progress"

    # Model repository served by Triton.
    model_repository: Path = Path("model_repository")
    # Models Triton loads at start (explicit model control); others are loaded on demand.
    triton_startup_models: tuple[str, ...] = ()

    log_level: str = "INFO"
    log_json: bool = True

    presign_ttl_seconds: int = Field(default=900, gt=0, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _fill_local_addresses(self) -> Settings:
        # frozen model: fill the derived defaults through object.__setattr__ once, at validation.
        defaults = {
            "postgres_dsn": f"postgresql://polydub@127.0.0.1:{self.postgres_port}/polydub",
            "nats_url": f"nats://127.0.0.1:{self.nats_port}",
            "s3_endpoint": f"127.0.0.1:{self.s3_port}",
            "triton_url": f"127.0.0.1:{self.triton_grpc_port}",
        }
        for name, value in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        return self

    @property
    def triton_http_url(self) -> str:
        host = self.triton_url.rsplit(":", 1)[0]
        return f"http://{host}:{self.triton_http_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
