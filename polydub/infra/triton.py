"""Triton over gRPC (tritonclient.grpc.aio): numpy in, numpy out, errors mapped, retries bounded.

One InferenceClient per process; concurrent calls share its channel, and Triton's dynamic batcher
merges them (and those of other workers) into batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tritonclient.grpc.aio as grpcclient
from numpy.typing import NDArray
from opentelemetry.trace import SpanKind
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import np_to_triton_dtype

from polydub.errors import RetryableError, ServiceUnavailable, classify
from polydub.retry import Backoff
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
        self, url: str, *, retry: RetryPolicy = RetryPolicy(), timeout: float = 120.0
    ) -> None:
        self.url = url
        self.retry = retry
        self.timeout = timeout
        self._client = grpcclient.InferenceServerClient(url, channel_args=channel_args())

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
    ) -> dict[str, NDArray[Any]]:
        """One request; retried on retryable errors (server restarting, queue full) only."""
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
            try:
                for attempt in range(self.retry.attempts):
                    try:
                        result = await self._client.infer(
                            model,
                            request_inputs,
                            model_version=version,
                            outputs=request_outputs,
                            client_timeout=self.timeout,
                            headers=headers,
                            parameters=dict(parameters or {}) or None,
                            priority=priority,
                        )
                        outcome = "ok"
                        return {name: result.as_numpy(name) for name in outputs}
                    except Exception as exc:
                        error = classify(exc)
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
