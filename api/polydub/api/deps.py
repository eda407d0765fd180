"""Dependencies: the app's clients (created in the lifespan, kept on ``app.state``) and the
caller, authenticated and rate-limited, and the job service, as ``Annotated`` types the routes
declare."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from nats.aio.client import Client as NATS

from polydub.api.auth import ApiKey, authenticate
from polydub.api.errors import Unauthenticated
from polydub.api.jobs_service import JobService
from polydub.api.key_cache import KeyCache
from polydub.api.outbox import OutboxRelay
from polydub.api.ratelimit import FailedAuthLimiter, TokenLeases
from polydub.infra.queue import connect
from polydub.infra.storage import ObjectStore
from polydub.infra.triton import InferenceClient
from polydub.retry import Backoff
from polydub.settings import Settings
from polydub.tasks import cancel_and_wait

log = logging.getLogger("polydub.api")


class NatsHolder:
    """One NATS connection, opened in the background: the API starts and accepts jobs while
    NATS is down (the outbox keeps them), and the client reconnects by itself afterwards."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nc: NATS | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_loop(), name="nats-connect")

    async def _connect_loop(self) -> None:
        backoff = Backoff(0.2, 5.0)
        failures = 0
        while self.nc is None:
            try:
                self.nc = await connect(self.settings, name="polydub-api")
            except Exception as exc:
                log.warning("NATS not reachable yet", extra={"error": str(exc)})
                failures += 1
                await asyncio.sleep(backoff.delay(failures))

    async def get(self) -> NATS | None:
        return self.nc

    async def close(self) -> None:
        if self._task is not None:
            # connect() may raise a cancellation as its own error, which the loop catches
            await cancel_and_wait([self._task])
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()


@dataclass
class AppState:
    settings: Settings
    pool: asyncpg.Pool
    store: ObjectStore
    nats: NatsHolder
    triton: InferenceClient
    relay: OutboxRelay
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    languages_cache: tuple[float, Any] | None = None
    auth_failures: FailedAuthLimiter = field(default_factory=FailedAuthLimiter)
    key_cache: KeyCache = field(init=False)
    rate_tokens: TokenLeases = field(init=False)

    def __post_init__(self) -> None:
        self.key_cache = KeyCache(self.settings.api_key_cache_seconds)
        self.rate_tokens = TokenLeases(self.settings.api_rate_lease_seconds)

    async def authenticate(self, key: str | None, client: str) -> ApiKey:
        """The key's row, counting a refused key against the client address (429 once it has
        failed too often, before any lookup)."""
        per_minute = self.settings.api_auth_failures_per_minute
        if key:
            self.auth_failures.check(client, per_minute)
        try:
            return await authenticate(self.pool, key, self.key_cache)
        except Unauthenticated:
            if key:
                self.auth_failures.failed(client, per_minute)
            raise


# Dependencies are async, even those that do no I/O: FastAPI runs a plain ``def`` dependency in
# its thread pool, two thread hops per request for nothing.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.polydub
    return state


State = Annotated[AppState, Depends(get_state)]

# Declared for the OpenAPI schema ("Authorize" in the docs); checked in ``caller``.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer pd_<prefix>_<secret>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def caller(
    request: Request,
    state: State,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_header)],
) -> ApiKey:
    key = api_key or (bearer.credentials if bearer else None)
    found = await state.authenticate(key, request.client.host if request.client else "")
    await state.rate_tokens.take(state.pool, found)
    return found


Caller = Annotated[ApiKey, Depends(caller)]


async def job_service(state: State) -> JobService:
    return JobService(state)


Jobs = Annotated[JobService, Depends(job_service)]
