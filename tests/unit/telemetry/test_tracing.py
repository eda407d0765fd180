"""span(), trace context through message headers, and the tracing setup."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

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
