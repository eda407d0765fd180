"""The FastAPI application: ``create_app()`` builds it; the lifespan opens the clients once.

``uvicorn --factory polydub.api.app:create_served_app`` or ``polydub api serve``. The lifespan applies
the migrations (safe with many replicas), opens the PostgreSQL pool, the S3 store, the Triton
client and a NATS connection (in the background: the API accepts jobs while NATS is down; the
outbox holds them), and starts the replica's background workers: the outbox relay, the
webhook sender, the retention purge and the reconciler of stuck jobs. With
``POLYDUB_API_METRICS_PORT`` set, /metrics and the detailed readiness answer only on that port
(``create_operations_app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from polydub.api.deps import AppState, NatsHolder
from polydub.api.errors import install_error_handlers
from polydub.api.outbox import OutboxRelay
from polydub.api.reconcile import Reconciler
from polydub.api.retention import run_retention
from polydub.api.routes import (
    docs,
    downloads,
    events,
    health,
    jobs,
    languages,
    original,
    outputs,
    segments,
    web,
    webhooks,
)
from polydub.api.secrets_at_rest import SecretBox, seal_clear_secrets
from polydub.api.slow_clients import BodyDeadline
from polydub.api.webhooks import WebhookSender
from polydub.infra.db import create_pool, migrate_database
from polydub.infra.storage import ObjectStore
from polydub.infra.triton import InferenceClient
from polydub.retry import Backoff
from polydub.settings import Settings, get_settings
from polydub.tasks import cancel_and_wait
from polydub.telemetry.http import TelemetryMiddleware, instrument_http, metrics_endpoint
from polydub.telemetry.tracing import API_SERVICE, configure_tracing, shutdown_tracing
from polydub.version import __version__

API_PREFIX = "/api/v1"

log = logging.getLogger("polydub.api")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    tracing = configure_tracing(settings, API_SERVICE)
    await migrate_database(settings)
    pool = await create_pool(settings, min_size=2, max_size=20)
    await seal_clear_secrets(pool, SecretBox.from_settings(settings))
    nats = NatsHolder(settings)
    nats.start()
    triton = InferenceClient(settings.triton_url)
    relay = OutboxRelay(pool, nats.get, settings)
    state = AppState(
        settings=settings,
        pool=pool,
        store=ObjectStore(settings),
        nats=nats,
        triton=triton,
        relay=relay,
    )
    sender = WebhookSender(pool, settings)
    # Every replica makes sure the bucket exists (a fresh bundled MinIO has none), in the
    # background like NATS: readiness's S3 check fails until it does.
    state.tasks = [asyncio.create_task(ensure_bucket(state.store), name="ensure-bucket")]
    if settings.api_key_cache_seconds > 0:
        listener = state.key_cache.listen(settings.postgres_dsn)
        state.tasks.append(asyncio.create_task(listener, name="api-key-listener"))
    if settings.api_run_workers:
        state.tasks += [
            asyncio.create_task(relay.run(), name="outbox-relay"),
            asyncio.create_task(sender.run(), name="webhooks"),
            asyncio.create_task(run_retention(pool, state.store, settings), name="retention"),
        ]
        if settings.reconcile_interval_seconds > 0:
            reconciler = Reconciler(pool, nats.get, settings, wake=relay.wake)
            state.tasks.append(asyncio.create_task(reconciler.run(), name="reconciler"))
    app.state.polydub = state
    if app.state.settle_heap:
        settle_heap()
    try:
        yield
    finally:
        await cancel_and_wait(state.tasks)
        await sender.close()
        await nats.close()
        with contextlib.suppress(Exception):
            await triton.close()
        await pool.close()
        shutdown_tracing(tracing)  # flushes the spans still buffered


def settle_heap() -> None:
    """Put what startup built (modules, the app, its clients: nearly all of the heap) out of the
    garbage collector's way. Serving status polls at ~200 requests/s, each API process ran a
    full collection every ~6 s that walked all of it: 75-130 ms during which every request in
    that process waited, enough to set the status p99 (issue 17: 400 ms in 2 of 3 runs, 110-230
    with this). Collected first, so no garbage is kept with it."""
    gc.collect()
    gc.freeze()


async def ensure_bucket(store: ObjectStore) -> None:
    """Create the bucket unless it exists, retrying until S3 answers (ObjectStore.ensure_bucket
    is safe when replicas race). A permanent refusal (no right to create it) is logged and
    retried too: the operator may create the bucket by hand meanwhile."""
    backoff = Backoff(0.2, 10.0, jitter="equal")  # replicas started together spread out
    failures = 0
    while True:
        try:
            if await store.ensure_bucket():
                log.info("bucket created", extra={"bucket": store.bucket})
            return
        except Exception as exc:
            failures += 1
            log.warning(
                "cannot ensure the bucket", extra={"bucket": store.bucket, "error": str(exc)}
            )
            await asyncio.sleep(backoff.delay(failures))


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="polydub",
        version=__version__,
        summary="Dub videos into other languages at volume.",
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # routes/docs.py: Swagger UI with its assets served locally, not a CDN's
        redoc_url=None,
    )
    app.state.settings = settings or get_settings()
    app.state.settle_heap = False  # create_served_app: a process of its own
    install_error_handlers(app)
    # Telemetry outermost (added last): a request refused for its slow body is counted too.
    app.add_middleware(BodyDeadline, settings=app.state.settings)
    app.add_middleware(TelemetryMiddleware)
    instrument_http(app)  # the server spans, outermost
    separate = bool(app.state.settings.api_metrics_port)
    if not separate:
        app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    for module in (jobs, outputs, original, downloads, events, languages, segments, webhooks):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(health.make_router(detailed=not separate))
    web.install(app)  # the web page at / (static files, no API routes)
    docs.install(app, API_PREFIX)
    return app


def create_operations_app(public: FastAPI) -> FastAPI:
    """/metrics, liveness and the detailed readiness, for Prometheus and the kubelet: the
    public app's clients (its lifespan opens them), served on ``api_metrics_port``."""
    ops = FastAPI(title="polydub operations", openapi_url=None, docs_url=None, redoc_url=None)
    ops.state = public.state
    install_error_handlers(ops)
    ops.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    ops.include_router(health.make_router(detailed=True))
    return ops


class PortDispatch:
    """One server, two listening sockets: requests that arrived on the operations port go to the
    operations app, everything else (and the lifespan) to the public app. One process, one
    lifespan and one graceful shutdown, instead of two servers racing for the signals."""

    def __init__(self, public: FastAPI, operations: FastAPI, operations_port: int) -> None:
        self.public = public
        self.operations = operations
        self.operations_port = operations_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] != "lifespan" and server and server[1] == self.operations_port:
            await self.operations(scope, receive, send)
        else:
            await self.public(scope, receive, send)


def create_served_app(settings: Settings | None = None) -> ASGIApp:
    """What ``polydub api serve`` runs: the public app, dispatched by port when the settings
    give /metrics and the detailed readiness a port of their own. The process is the app's
    alone, so its startup heap is frozen (``settle_heap``); tests share theirs."""
    app = create_app(settings)
    app.state.settle_heap = True
    port = app.state.settings.api_metrics_port
    if not port:
        return app
    return PortDispatch(app, create_operations_app(app), port)


__all__ = ["AppState", "PortDispatch", "create_app", "create_operations_app", "create_served_app"]
