"""span(), trace context through message headers, and the tracing setup."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from polydub.errors import ConfigurationError
from polydub.settings import Settings
from polydub.telemetry import (
    configure_tracing,
    extract_context,
    inject_headers,
    mark_error,
    shutdown_tracing,
    span,
    tracing,
)

pytestmark = pytest.mark.unit


def test_headers_carry_the_span_to_a_consumer(exporter: InMemorySpanExporter) -> None:
    with span("job.submit") as submit:
        headers = inject_headers({"Nats-Msg-Id": "abc"})
    ids = submit.get_span_context()
    assert headers["Nats-Msg-Id"] == "abc"
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", f"{ids.trace_id:032x}", f"{ids.span_id:016x}")
    assert int(flags, 16) & 1  # sampled

    # Another process, with headers as NATS or a proxy may spell them.
    received = {"Nats-Msg-Id": "abc", "TraceParent": headers["traceparent"]}
    with span("job.run", kind=SpanKind.CONSUMER, context=extract_context(received)) as run:
        pass
    assert run.get_span_context().trace_id == ids.trace_id
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert finished["job.run"].parent is not None
    assert finished["job.run"].parent.span_id == ids.span_id
    assert finished["job.run"].parent.is_remote
    assert finished["job.run"].kind is SpanKind.CONSUMER


def test_no_span_no_header_and_a_new_root(exporter: InMemorySpanExporter) -> None:
    assert inject_headers({"a": "1"}) == {"a": "1"}
    with span("outer"), span("job.run", context=extract_context(None)) as run:
        pass
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert finished["job.run"].parent is None  # the message's (absent) parent, not "outer"
    assert run.get_span_context().trace_id != finished["outer"].context.trace_id


async def test_tasks_inherit_the_current_span(exporter: InMemorySpanExporter) -> None:
    async def stage(name: str) -> None:
        with span(name):
            await asyncio.sleep(0)

    with span("job.run") as job:
        async with asyncio.TaskGroup() as group:
            group.create_task(stage("stage.spa"))
            group.create_task(stage("stage.fra"))
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("stage.spa", "stage.fra"):
        parent = by_name[name].parent
        assert parent is not None and parent.span_id == job.get_span_context().span_id


def test_errors_mark_the_span(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), span("stage.x", attributes={"a": 1, "skipped": None}):
        raise ValueError("bad input")
    with span("job.run"):
        mark_error(RuntimeError("handled"))
    failed, handled = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {}) == {"a": 1}
    assert [e.name for e in failed.events] == ["exception"]
    assert handled.status.status_code is StatusCode.ERROR
    assert handled.status.description == "RuntimeError: handled"


def test_configure_off_without_endpoint_and_resource_with_it() -> None:
    assert configure_tracing(Settings(), "polydub-api") is None
    settings = Settings(otel_endpoint="http://127.0.0.1:1", otel_environment="test")
    provider = configure_tracing(settings, "polydub-worker")
    assert provider is not None
    try:
        assert tracing._provider is provider
        attributes = provider.resource.attributes
        assert attributes["service.name"] == "polydub-worker"
        assert attributes["service.namespace"] == "polydub"
        assert attributes["deployment.environment.name"] == "test"
        assert "service.instance.id" in attributes and "service.version" in attributes
    finally:
        shutdown_tracing(provider)
    assert tracing._provider is None


# ---- the standard OpenTelemetry variables (issue #15, item 7) -----------------------------------

OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "POLYDUB_OTEL_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
)


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_endpoint_comes_from_the_standard_names_first(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("POLYDUB_OTEL_ENDPOINT", "http://alias:4317")
    assert Settings().otel_endpoint == "http://alias:4317"  # the older name still works
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert Settings().otel_endpoint == "http://collector:4317"
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")
    assert Settings().otel_endpoint == "http://traces:4317"
    assert Settings(otel_endpoint="http://given:4317").otel_endpoint == "http://given:4317"


def test_sdk_disabled_protocol_service_name_and_sampler(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert configure_tracing(Settings(), "polydub-api") is None
    otel_env.delenv("OTEL_SDK_DISABLED")

    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with pytest.raises(ConfigurationError) as refused:
        configure_tracing(Settings(), "polydub-api")
    assert refused.value.code == "otel_protocol_unsupported"
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")

    otel_env.setenv("OTEL_SERVICE_NAME", "dubbing-edge")
    otel_env.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = configure_tracing(Settings(), "polydub-api")
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "dubbing-edge"
        assert provider.sampler is ALWAYS_OFF  # the SDK read OTEL_TRACES_SAMPLER
    finally:
        shutdown_tracing(provider)


def test_an_instrumentation_tracer_follows_tracing_configured_later(
    otel_env: pytest.MonkeyPatch,
) -> None:
    """The API's HTTP middleware takes its tracer before the lifespan configures tracing."""
    early = tracing.FOLLOWING_PROVIDER.get_tracer("instrumentation", "1.0")
    with early.start_as_current_span("before") as before:
        assert not before.get_span_context().is_valid  # nothing configured: no-op spans
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    otel_env.setattr(tracing, "_provider", provider)
    with early.start_as_current_span("after", kind=SpanKind.SERVER), span("child"):
        pass
    early.start_span("plain").end()
    names = [s.name for s in memory.get_finished_spans()]
    assert names == ["child", "after", "plain"]
    child, after, _ = memory.get_finished_spans()
    assert child.parent is not None and child.parent.span_id == after.context.span_id
    provider.shutdown()
