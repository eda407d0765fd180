"""One Settings object for every tier, read from ``POLYDUB_*`` environment variables.

Service addresses default to the local stack's ports, so a developer machine and the test suite
need no configuration; production sets the ``*_url`` / ``*_dsn`` fields to real deployments.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="POLYDUB_", extra="ignore", frozen=True, populate_by_name=True
    )

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
    # A gRPC target (see triton_http_url); calls are spread round robin over its addresses.
    triton_url: str = ""
    # The address clients should use for presigned links when it differs from s3_endpoint
    # (e.g. a public hostname in front of MinIO).
    s3_public_endpoint: str = ""

    # Queue layout.
    jobs_stream: str = "JOBS"
    jobs_subject: str = "jobs.submitted"
    # 3 on a clustered JetStream (production), so losing a node loses no queued job.
    jobs_stream_replicas: int = Field(default=1, ge=1, le=5)
    progress_subject_prefix: str = "progress"

    # Model repository served by Triton.
    model_repository: Path = Path("model_repository")
    # Models Triton loads at start (explicit model control); others are loaded on demand.
    triton_startup_models: tuple[str, ...] = ()
    # Triton client deadlines (polydub/infra/triton.py Deadline): from the work asked, never one
    # constant. A request may take floor + cost x (units of work in flight through that client:
    # its own and those sent before it), at most max; when that expires the gRPC call is
    # cancelled and Triton drops the request (queued) or the BLS model stops it (running).
    # The costs suit the `small` preset on 2 CPU cores; raise them for `large` or slower hosts.
    triton_deadline_floor_seconds: float = Field(default=60.0, gt=0)
    triton_deadline_max_seconds: float = Field(default=3600.0, gt=0)
    # per target token of one segment (all its beams): NLLB-600M decoded ~6 tokens/s under load
    triton_translation_seconds_per_token: float = Field(default=0.25, ge=0)
    triton_tts_seconds_per_token: float = Field(default=0.05, ge=0)  # an input token at rate 1
    triton_asr_seconds_per_audio_second: float = Field(default=0.5, ge=0)
    # Translation requests one process keeps in flight (the rest wait in the client, not in
    # Triton's queue, which refuses requests beyond its max_queue_size).
    triton_translation_max_in_flight: int = Field(default=64, ge=1)
    # Retries of all the Triton clients of a process together (polydub/retry.py RetryBudget):
    # at most ratio x the requests of the last window, plus min_retries per window. Beyond it
    # the error surfaces as retryable: the job's message is redelivered later.
    triton_retry_budget_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    triton_retry_budget_window_seconds: float = Field(default=60.0, gt=0)
    triton_retry_budget_min_retries: int = Field(default=10, ge=0)

    log_level: str = "INFO"
    log_json: bool = True

    presign_ttl_seconds: int = Field(default=900, gt=0, le=7 * 24 * 3600)

    # Media limits, one set for both tiers: the API refuses an upload and the worker's validate
    # stage fails a job on exactly the same rules.
    media_max_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    media_max_seconds: float = Field(default=3600.0, gt=0)
    media_max_width: int = 7680
    media_max_height: int = 4320
    media_max_streams: int = 16
    # ffprobe's wall-clock limit on one probe (it then counts as media_too_complex). The two tiers
    # had 60 s (API) and 30 s (worker); the stricter 30 s holds for both, since the probe only
    # demuxes. POLYDUB_API_PROBE_TIMEOUT_SECONDS, the API's old name, is still read.
    media_probe_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices(
            "POLYDUB_MEDIA_PROBE_TIMEOUT_SECONDS",
            "POLYDUB_API_PROBE_TIMEOUT_SECONDS",
        ),
    )
    # The binaries polydub.media.runner starts for every ffmpeg/ffprobe run (a name on PATH or a
    # path): POLYDUB_FFMPEG, POLYDUB_FFPROBE.
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    # How much nicer than the process that starts them ffmpeg and ffprobe run (POLYDUB_MEDIA_NICE;
    # 0: the same priority). The API probes every upload: a burst of ten made status reads wait
    # up to 0.8 s for the CPU their probes took (issue 17, item 5); in the worker, media work
    # yields to the event loop that keeps NATS heartbeats and Triton calls moving.
    media_nice: int = Field(default=10, ge=0, le=19)

    # API tier (api/): limits on what a client may send, and its background workers.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # /metrics and the detailed readiness on their own port (Kubernetes: never behind the Ingress);
    # 0 serves them on api_port, as the local stack does.
    api_metrics_port: int = Field(default=0, ge=0, le=65535)
    api_public_url: str = ""  # base of the links in responses when behind a proxy; "" = relative
    api_max_target_languages: int = 10
    api_tmp_dir: Path | None = None  # where uploads are spooled for probing; None = system temp
    api_upload_ttl_seconds: int = Field(default=3600, gt=0)  # presigned upload reservations
    # Reservations a key may hold open (not yet turned into a job, not expired): 429 beyond.
    api_max_open_uploads: int = Field(default=20, ge=1)
    api_preview_max_seconds: float = 60.0
    # Previews are cut by stream copy only (never encoded in the API): ranges snap outward to
    # this grid, which is also the keyframe interval of the worker's preview rendition.
    preview_grid_seconds: float = Field(default=5.0, gt=0, le=60)
    api_preview_concurrency_per_key: int = Field(default=2, ge=1)  # cuts at once, per replica
    api_default_rate_limit_per_minute: int = 600
    # Failed authentications a client address may make a minute (a bucket per address, per
    # replica): beyond it, requests that carry a key are answered 429 before any lookup.
    api_auth_failures_per_minute: int = Field(default=60, ge=1)
    # Authenticated keys are kept in each replica's memory this long (0: looked up on every
    # request); a change to a key row evicts it within moments (NOTIFY, polydub.api.key_cache).
    api_key_cache_seconds: float = Field(default=60.0, ge=0)
    # Each replica takes a key's rate-limit tokens this many seconds' worth at a time (0: one
    # database write per request); see polydub.api.ratelimit.TokenLeases.
    api_rate_lease_seconds: float = Field(default=1.0, ge=0)
    # Slow clients: a request's headers must be complete within api_header_timeout_seconds of
    # the connection (or of the previous response); its body may wait at most
    # api_body_timeout_seconds for any chunk, and must average api_body_min_bytes_per_second
    # after that grace (counting only the time spent waiting on the client). 408 beyond.
    api_header_timeout_seconds: float = Field(default=10.0, gt=0)
    api_body_timeout_seconds: float = Field(default=30.0, gt=0)
    api_body_min_bytes_per_second: int = Field(default=1024, ge=0)
    # Open SSE / WebSocket progress streams re-check their key this often (a revoked key ends
    # them).
    api_stream_key_check_seconds: float = Field(default=30.0, gt=0)
    # Encrypts the webhook signing secrets at rest (Fernet). Comma-separated: the first key
    # encrypts, every key decrypts (rotation). Production sets it from a Secret; the default is
    # for development only.
    api_webhook_secret_keys: str = Field(default="polydub-development-only", min_length=1)
    api_default_max_concurrent_jobs: int = 100
    api_run_workers: bool = True  # outbox relay, webhook sender and retention purge in-process
    api_outbox_poll_seconds: float = 0.5
    api_outbox_publish_timeout_seconds: float = 2.0
    api_events_poll_seconds: float = 1.0
    api_sse_keepalive_seconds: float = 15.0
    api_webhook_poll_seconds: float = 1.0
    api_webhook_timeout_seconds: float = 10.0
    api_webhook_max_attempts: int = 8
    api_webhook_backoff_base_seconds: float = 5.0
    api_webhook_backoff_max_seconds: float = 3600.0
    api_webhook_allow_private: bool = False  # callbacks to loopback/private addresses (SSRF)
    # Jobs from a source_url (fetched by the worker, never the API): off unless enabled. Only
    # https to public addresses; each redirect hop is re-checked, the body is capped at
    # min(source_url_max_bytes, media_max_bytes) and the whole fetch at the timeout.
    source_url_enabled: bool = False
    source_url_max_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    source_url_timeout_seconds: float = Field(default=300.0, gt=0)
    source_url_max_redirects: int = Field(default=5, ge=0, le=20)
    # A PEM file of CA certificates trusted for source URLs besides the public ones (certifi):
    # a private CA, or a test's. The environment's SSL_CERT_FILE is not read (trust_env off).
    source_url_ca_file: str | None = None
    # TEST ONLY: also http, and IPv4 loopback (127.0.0.0/8) hosts, so tests can serve media
    # locally. Private, link-local and metadata addresses stay refused. Never in a deployment.
    source_url_allow_loopback: bool = False
    retention_seconds: int = Field(default=7 * 24 * 3600, gt=0)  # inputs and artifacts expire
    retention_interval_seconds: float = 300.0
    # The reconciler (api/reconcile.py): every interval (0: off), jobs queued or running with no
    # change for reconcile_stale_seconds and no live queue message are republished or failed.
    # Keep reconcile_stale_seconds above the worker's stall_seconds + ack wait + retry delay.
    reconcile_interval_seconds: float = Field(default=60.0, ge=0)
    reconcile_stale_seconds: float = Field(default=900.0, gt=0)
    reconcile_max_republishes: int = Field(default=3, ge=0)

    # Observability (polydub/telemetry). Traces go over OTLP/gRPC to otel_endpoint (e.g.
    # http://otel-collector:4317; https:// for TLS); empty turns tracing off. The standard
    # OpenTelemetry variables are read first; POLYDUB_OTEL_ENDPOINT is the older alias.
    otel_endpoint: str = Field(
        default="",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "POLYDUB_OTEL_ENDPOINT",
        ),
    )
    # Only OTLP over gRPC is installed: another protocol is refused at start, not ignored.
    # (Each alias list ends with the POLYDUB_ name, which polydub.stack hands its children.)
    otel_protocol: str = Field(
        default="grpc",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "POLYDUB_OTEL_PROTOCOL",
        ),
    )
    otel_sdk_disabled: bool = Field(
        default=False,
        validation_alias=AliasChoices("OTEL_SDK_DISABLED", "POLYDUB_OTEL_SDK_DISABLED"),
    )
    otel_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)  # of new traces (api roots)
    otel_environment: str = ""  # deployment.environment.name on every span, when set
    # The worker's Prometheus endpoint (/metrics); port 0 turns it off.
    # Loopback by default: the chart sets 0.0.0.0 for the kubelet and Prometheus.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9100, ge=0, le=65535)
    worker_metrics_poll_seconds: float = Field(default=5.0, gt=0)  # queue depth, Triton stats

    # Quality gates (orchestrator/gates.py): the report figures that put a warning on a job.
    # A language with speech and nothing dubbed fails whatever these say.
    quality_min_language_probability: float = Field(default=0.5, ge=0.0, le=1.0)  # auto-detect
    quality_min_avg_logprob: float = Field(default=-1.0, le=0.0)  # Whisper's log_prob_threshold
    quality_max_truncated_ratio: float = Field(default=0.25, ge=0.0, le=1.0)  # segments cut short

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
        """Triton's HTTP endpoint on the host of ``triton_url``, a gRPC target: ``host:port``,
        ``dns:///name:port`` (the chart's headless Service) or ``ipv4:a:p,b:p`` (the first)."""
        target = self.triton_url
        for scheme in ("dns:", "ipv4:", "ipv6:"):
            if target.startswith(scheme):
                target = target.removeprefix(scheme).rsplit("/", 1)[-1].split(",")[0]
        host = target.rsplit(":", 1)[0]
        return f"http://{host}:{self.triton_http_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
