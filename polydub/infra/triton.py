"""Triton over gRPC (tritonclient.grpc.aio): numpy in, numpy out, errors mapped, retries bounded.

One InferenceClient per process; concurrent calls share its channel, and Triton's dynamic batcher
merges them (and those of other workers) into batches.

Overload must not amplify: every call has a deadline derived from the work it asks
(``Deadline``, ``WorkDeadlines``: the model clients pass ``deadline=``), a deadline that expires
cancels the gRPC call (so does cancelling the task that awaits it), which Triton sees: a queued
request is dropped, a running BLS model checks ``request.is_cancelled()``; and retries are
bounded per request (``RetryPolicy``) and across the whole process (``RetryBudget``, shared by
every client). A spent budget surfaces the error as retryable: the stage fails, the job's
message is redelivered later, instead of the worker hammering a server already behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tritonclient.grpc.aio as grpcclient
from numpy.typing import NDArray
from opentelemetry.trace import SpanKind
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import np_to_triton_dtype

from polydub.errors import Overloaded, PolydubError, RetryableError, ServiceUnavailable, classify
from polydub.infra.triton_recovery import RELOAD_PARAMETER, StubRecovery, stub_unhealthy
from polydub.retry import Backoff, RetryBudget
from polydub.settings import Settings, get_settings
from polydub.telemetry import metrics
from polydub.telemetry.propagation import inject_headers
from polydub.telemetry.tracing import span


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 3.0

    def delay(self, attempt: int) -> float:
        """Before the retry that follows failed try ``attempt`` (0 is the first try). Full jitter
        keeps many workers from retrying in lockstep after a Triton restart."""
        return Backoff(self.base_delay, self.max_delay, jitter="full").delay(attempt + 1)


@dataclass(frozen=True)
class Deadline:
    """A client deadline from the work asked: ``floor + per_unit * units``, at most ``cap``.

    The unit is the model's (a target token, an input token, a second of audio); the floor covers
    a call's fixed costs and a server that is briefly busy."""

    floor: float
    per_unit: float
    cap: float = 3600.0

    def seconds(self, units: float) -> float:
        return min(self.cap, self.floor + self.per_unit * max(units, 0.0))

    @classmethod
    def from_settings(cls, per_unit: float, settings: Settings | None = None) -> Deadline:
        settings = settings or get_settings()
        return cls(
            settings.triton_deadline_floor_seconds, per_unit, settings.triton_deadline_max_seconds
        )


class WorkDeadlines:
    """Deadlines for the requests of one model client: each request's counts the units in flight
    through the client when it is sent, its own included, since Triton serves that work before
    or together with it. A burst of 48 segments sent at once thus gives the 48th a deadline for
    48 segments' work, where one constant would expire for the tail of any burst big enough."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.units = 0.0  # in flight now

    @contextlib.contextmanager
    def admit(self, units: float) -> Iterator[float]:
        """The request's deadline in seconds, while its ``units`` count as in flight."""
        self.units += units
        try:
            yield self.deadline.seconds(self.units)
        finally:
            self.units -= units


def retry_budget(settings: Settings) -> RetryBudget:
    return RetryBudget(
        settings.triton_retry_budget_ratio,
        settings.triton_retry_budget_window_seconds,
        settings.triton_retry_budget_min_retries,
    )


@functools.cache
def process_retry_budget() -> RetryBudget:
    """The retry budget every InferenceClient of this process shares unless given its own."""
    return retry_budget(get_settings())


def channel_args() -> list[tuple[str, Any]]:
    """tritonclient's own channel options (passing any replaces all of them), plus round robin.

    With ``round_robin`` the channel keeps a connection to every address the target resolves to
    and spreads calls over them: a ``dns:///triton-headless:8001`` target (a headless Service,
    one A record per ready pod) reaches every Triton replica, where a ClusterIP pins the one
    long-lived connection, and so every call of a worker, to one pod. With one address it is
    the same as the default. New pods are found when the name is resolved again: after a
    connection closes, which Triton's ``--grpc-max-connection-age`` makes happen regularly.
    """
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.lb_policy_name", "round_robin"),
    ]


class InferenceClient:
    """``url`` is a gRPC target: ``host:port``, ``dns:///name:port`` (every address of the name,
    round robin: the chart's headless Service) or ``ipv4:a:p1,b:p2`` (a fixed list)."""

    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        timeout: float = 120.0,
        budget: RetryBudget | None = None,
        recovery: StubRecovery | None = None,
    ) -> None:
        """``timeout``: the deadline of a call that passes none (model clients derive theirs from
        the work asked). ``budget``: the process's shared one (``process_retry_budget``) unless
        given."""
        self.url = url
        self.retry = retry
        self.timeout = timeout
        self.budget = budget or process_retry_budget()
        self._client = grpcclient.InferenceServerClient(url, channel_args=channel_args())
        # A python model whose stub process died is reloaded (bounded): see triton_recovery.
        self.recovery = recovery or StubRecovery(self._reload, last_reload=self._last_reload)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> InferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        *,
        version: str = "",
        parameters: Mapping[str, Any] | None = None,
        priority: int = 0,
        deadline: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        """One request; retried on retryable errors (server restarting, queue full, deadline
        expired) only, while the process's retry budget allows. ``deadline``: seconds each
        attempt may take (default: the client's timeout); on expiry the call is cancelled."""
        seconds = self.timeout if deadline is None else deadline
        request_inputs = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            request_inputs.append(tensor)
        request_outputs = [grpcclient.InferRequestedOutput(name) for name in outputs]
        first = next(iter(inputs.values()), None)
        rows = int(first.shape[0]) if first is not None and first.ndim else 1

        attributes = {
            "rpc.system": "grpc",
            "rpc.service": "inference.GRPCInferenceService",
            "rpc.method": "ModelInfer",
            "server.address": self.url,
            "polydub.triton.model": model,
            "polydub.triton.model_version": version or None,
            "polydub.triton.batch_size": rows,
        }
        started = time.monotonic()
        outcome = "error"
        with span(f"triton.infer {model}", kind=SpanKind.CLIENT, attributes=attributes) as current:
            # Trace context as gRPC metadata: a Triton with OpenTelemetry tracing on continues it.
            headers = inject_headers() or None
            self.budget.record_request()
            try:
                for attempt in range(self.retry.attempts):
                    sent_at = time.monotonic()
                    try:
                        result = await self._client.infer(
                            model,
                            request_inputs,
                            model_version=version,
                            outputs=request_outputs,
                            client_timeout=seconds,
                            headers=headers,
                            parameters=dict(parameters or {}) or None,
                            priority=priority,
                        )
                        outcome = "ok"
                        return {name: result.as_numpy(name) for name in outputs}
                    except Exception as exc:
                        error = _deadline_exceeded(exc, model, seconds) or classify(exc)
                        if stub_unhealthy(error.message):
                            # no longer than this attempt's deadline leaves
                            left = seconds - (time.monotonic() - sent_at)
                            error = await self.recovery.recover(
                                model, sent_at, error.message, wait_s=left
                            )
                        if error.code == "model_not_found" and not await self.is_ready():
                            # A stopping Triton unloads its models before it stops answering
                            # (and a starting one is not ready yet): "not found" is transient
                            # then. A ready server that lacks the model stays a permanent error.
                            error = ServiceUnavailable(
                                f"Triton is not ready: {error.message}", code="triton_not_ready"
                            )
                        last = attempt == self.retry.attempts - 1
                        if not isinstance(error, RetryableError) or last:
                            raise error from exc
                        if not self.budget.try_retry():
                            current.add_event("retry_budget_spent", {"error": error.code})
                            raise Overloaded(
                                f"{error.message} (not retried: this process's Triton retry "
                                "budget is spent)",
                                code="triton_retry_budget_spent",
                                detail={"error": error.code},
                            ) from exc
                        metrics.TRITON_RETRIES.labels(model).inc()
                        current.add_event("retry", {"attempt": attempt + 1, "error": error.code})
                        await asyncio.sleep(self.retry.delay(attempt))
            finally:
                # looked up here, not at import: a process that never calls Triton exports none
                duration = time.monotonic() - started
                metrics.TRITON_REQUEST_DURATION.labels(model, outcome).observe(duration)
                metrics.TRITON_REQUEST_BATCH.labels(model).observe(rows)
        raise AssertionError("unreachable")

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready())
        except Exception:
            return False

    async def is_model_ready(self, model: str) -> bool:
        try:
            return bool(await self._client.is_model_ready(model))
        except Exception:
            return False

    async def load_model(self, model: str) -> None:
        try:
            await self._client.load_model(model)
        except Exception as exc:
            raise classify(exc) from exc

    async def load_models(self, groups: Sequence[Sequence[str]]) -> list[str]:
        """Load each group's models at once, one group after the other (``stack.models
        .load_groups``: the graphs, then the python models that call them). -> the names, in
        load order."""
        for group in groups:
            # every load of the group ends before the first error is raised
            outcomes = await asyncio.gather(
                *(self.load_model(model) for model in group), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        return [model for group in groups for model in group]

    async def _reload(self, model: str) -> None:
        """Load ``model`` again, with new instances (the old ones serve until those are ready).
        Triton skips a load whose model files and config did not change, so the model's own
        config is passed with a parameter that differs on every reload."""
        current = await self._client.get_model_config(model, as_json=True)
        config = dict(current.get("config", current))
        config["parameters"] = {
            **config.get("parameters", {}),
            RELOAD_PARAMETER: {"string_value": f"{time.time_ns()}"},
        }
        await self._client.load_model(model, config=json.dumps(config))

    async def _last_reload(self, model: str) -> float | None:
        """When ``model`` was last reloaded by ``_reload`` (any process: the time is in the
        config Triton serves), wall-clock seconds; None if it never was."""
        current = await self._client.get_model_config(model, as_json=True)
        config = current.get("config", current)
        stamp = config.get("parameters", {}).get(RELOAD_PARAMETER, {}).get("string_value")
        return int(stamp) / 1e9 if stamp else None

    async def model_metadata(self, model: str) -> dict[str, Any]:
        """Triton's metadata of a loaded model: its inputs' and outputs' names, datatypes and
        shapes (dims as strings, -1 where variable, the batch dim first when it batches)."""
        try:
            metadata: dict[str, Any] = await self._client.get_model_metadata(model, as_json=True)
        except Exception as exc:
            raise classify(exc) from exc
        return metadata

    async def unload_model(self, model: str) -> None:
        try:
            await self._client.unload_model(model)
        except Exception as exc:
            raise classify(exc) from exc

    async def repository_index(self) -> list[dict[str, Any]]:
        index = await self._client.get_model_repository_index(as_json=True)
        models: list[dict[str, Any]] = index.get("models", [])
        return models

    async def statistics(self, model: str) -> dict[str, Any]:
        """Inference statistics: inference_count vs execution_count shows how well it batches."""
        stats = await self._client.get_inference_statistics(model, as_json=True)
        entries: list[dict[str, Any]] = stats.get("model_stats", [])
        return entries[0] if entries else {}

    async def all_statistics(self) -> list[dict[str, Any]]:
        """Inference statistics of every loaded model (and version), one Triton call."""
        stats = await self._client.get_inference_statistics("", as_json=True)
        entries: list[dict[str, Any]] = stats.get("model_stats", [])
        return entries


def _deadline_exceeded(exc: Exception, model: str, seconds: float) -> PolydubError | None:
    """The deadline expired: gRPC cancelled the call, and Triton drops the request."""
    status = getattr(exc, "status", None)
    if not callable(status) or not str(status() or "").endswith("DEADLINE_EXCEEDED"):
        return None
    return ServiceUnavailable(
        f"{model} did not answer within its {seconds:.1f} s deadline; the call was cancelled",
        code="triton_deadline_exceeded",
        detail={"model": model, "deadline_seconds": round(seconds, 3)},
    )
