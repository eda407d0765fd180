"""A minimal OTLP/gRPC trace receiver on loopback: what a collector would receive, kept in memory.

Built on opentelemetry-proto's collector service stubs; spans are flattened into ``Received``
records (ids as hex, attributes as Python values, the service name of their resource).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    pairs: list[KeyValue] = list(items)
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class Received:
    service: str
    resource: dict[str, Any]
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[Received] = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(
                        Received(
                            service=str(resource.get("service.name", "")),
                            resource=resource,
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes=_attributes(s.attributes),
                            status_code=s.status.code,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        with self.receiver.lock:
            self.receiver.spans.extend(received)
            self.receiver.requests += 1
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """``with OtlpReceiver() as receiver``: listening on ``receiver.endpoint`` until exit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[Received] = []
        self.requests = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add_service: Any = trace_service_pb2_grpc.add_TraceServiceServicer_to_server  # untyped
        add_service(_Service(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.spans)

    async def wait_for(self, predicate: Any, within: float = 20.0) -> list[Received]:
        """Poll until ``predicate(spans)`` holds (spans arrive in batches); the spans then."""
        deadline = time.monotonic() + within
        while True:
            spans = self.snapshot()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({s.name for s in spans})
                raise AssertionError(f"spans not received within {within} s; have {names}")
            await asyncio.sleep(0.1)
