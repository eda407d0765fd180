"""Tracing setup and the ``span()`` helper.

The provider is held here rather than installed as OpenTelemetry's global one: a global provider
can be set once per process, while tests (and ``polydub stack`` demos) run the API and a worker
in one process and reconfigure it. Code never holds a tracer: ``span()`` asks for one each time,
so it follows the provider in force. With no provider configured, spans come from the global
provider (a no-op unless something like ``opentelemetry-instrument`` installed one), and context
still flows through them, so a traceparent received is passed on unchanged.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from polydub.errors import ConfigurationError
from polydub.settings import Settings
from polydub.version import __version__

API_SERVICE = "polydub-api"
WORKER_SERVICE = "polydub-worker"
TRACER_NAME = "polydub"

_provider: TracerProvider | None = None


def build_resource(service: str, settings: Settings) -> Resource:
    """service.* and host attributes; OTEL_RESOURCE_ATTRIBUTES adds more (e.g. k8s.pod.name),
    and OTEL_SERVICE_NAME, when set, names the service instead of ``service``."""
    attributes: dict[str, Any] = {
        "service.name": os.environ.get("OTEL_SERVICE_NAME") or service,
        "service.namespace": "polydub",
        "service.version": __version__,
        "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    }
    if settings.otel_environment:
        attributes["deployment.environment.name"] = settings.otel_environment
    return Resource.create(attributes)


def configure_tracing(settings: Settings, service: str) -> TracerProvider | None:
    """Export this process's spans over OTLP/gRPC to ``settings.otel_endpoint``; None when unset
    (or OTEL_SDK_DISABLED).

    The endpoint (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, or POLYDUB_OTEL_ENDPOINT) has the scheme
    that picks the transport security: ``http://collector:4317`` is plaintext, ``https://`` TLS.
    OTEL_EXPORTER_OTLP_HEADERS / _CERTIFICATE / _TIMEOUT and OTEL_BSP_* are honoured, and
    OTEL_TRACES_SAMPLER (with _ARG), when set, replaces the parent-based ratio sampler.
    """
    global _provider
    if not settings.otel_endpoint or settings.otel_sdk_disabled:
        return None
    if settings.otel_protocol != "grpc":
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={settings.otel_protocol!r} is not supported: polydub "
            "exports traces over OTLP/gRPC only (use 'grpc' and the collector's gRPC port, 4317)",
            code="otel_protocol_unsupported",
        )
    # Imported here: the exporter pulls in grpc and protobuf stubs a disabled process never needs.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=build_resource(service, settings),
        # Parent-based: a worker keeps the API's sampling decision, so a trace is whole or absent.
        # None: the SDK reads OTEL_TRACES_SAMPLER itself.
        sampler=None
        if os.environ.get("OTEL_TRACES_SAMPLER")
        else ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint))
    )
    if _provider is not None:
        _provider.shutdown()
    _provider = provider
    return provider


def force_flush(timeout_millis: int = 5000) -> bool:
    """Export the spans still buffered (before a short-lived command exits, or in tests)."""
    return _provider.force_flush(timeout_millis) if _provider is not None else True


def shutdown_tracing(provider: TracerProvider | None) -> None:
    """Flush and stop ``provider``; spans opened afterwards go to the global provider."""
    global _provider
    if provider is None:
        return
    if _provider is provider:
        _provider = None
    provider.shutdown()


def tracer() -> trace.Tracer:
    if _provider is not None:
        return _provider.get_tracer(TRACER_NAME, __version__)
    return trace.get_tracer(TRACER_NAME, __version__)


class _FollowingTracer(trace.Tracer):
    """A tracer that asks the provider in force for each span (see FollowingTracerProvider)."""

    def __init__(self, name: str, version: str | None, schema_url: str | None) -> None:
        self._args = (name, version, schema_url)

    def _current(self) -> trace.Tracer:
        provider = _provider if _provider is not None else trace.get_tracer_provider()
        return provider.get_tracer(*self._args)

    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        return self._current().start_span(*args, **kwargs)

    @contextlib.contextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[Span]:  # type: ignore[override]
        with self._current().start_as_current_span(*args, **kwargs) as current:
            yield current


class FollowingTracerProvider(trace.TracerProvider):
    """For instrumentation libraries, which take a provider once, when they are set up: the API's
    HTTP middleware is built before its lifespan calls ``configure_tracing``, and tests
    reconfigure tracing in one process. Its tracers follow the provider in force, like ``span()``.
    """

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> trace.Tracer:
        return _FollowingTracer(
            instrumenting_module_name, instrumenting_library_version, schema_url
        )


FOLLOWING_PROVIDER = FollowingTracerProvider()


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    context: Context | None = None,
) -> Iterator[Span]:
    """A current span for the block; an exception leaving it is recorded and marks it ERROR.

    ``context`` gives an explicit parent (a context extracted from message headers); by default
    the parent is the current span, which asyncio tasks inherit from where they were created.
    """
    with tracer().start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
    ) as current:
        yield current


def mark_error(error: BaseException, span_: Span | None = None) -> None:
    """Mark a span (the current one by default) failed when the error was handled, not raised."""
    target = span_ or trace.get_current_span()
    target.record_exception(error)
    target.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))
