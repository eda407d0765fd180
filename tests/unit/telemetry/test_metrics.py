"""The API's request telemetry (spans from the instrumentation, metrics from the middleware),
stage timing and Triton statistics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from polydub.telemetry.http import TelemetryMiddleware, instrument_http, metrics_endpoint
from polydub.telemetry.metrics import TRITON_STATISTICS, TritonStatistics, time_stage

pytestmark = pytest.mark.unit


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(TelemetryMiddleware)
    instrument_http(app)  # as create_app does: spans from OpenTelemetry's instrumentation
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise HTTPException(404)
        return {"id": item_id}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    # Under a prefix, as the API's routers are: the label is still the whole template.
    app.include_router(router, prefix="/unit")
    return app


async def test_request_spans_and_metrics(exporter: InMemorySpanExporter) -> None:
    route = "/unit/items/{item_id}"
    ok_before = value("polydub_http_requests_total", route=route, method="GET", status="200")
    seconds_before = value("polydub_http_request_duration_seconds_count", route=route, method="GET")
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (
            await client.get("/unit/items/7", headers={"traceparent": parent})
        ).status_code == 200
        assert (await client.get("/unit/items/0")).status_code == 404
        assert (await client.get("/unit/boom")).status_code == 500
        assert (await client.get("/unit/nowhere/42")).status_code == 404
        scrape = await client.get("/metrics")

    assert value("polydub_http_requests_total", route=route, method="GET", status="200") == (
        ok_before + 1
    )
    assert (
        value("polydub_http_request_duration_seconds_count", route=route, method="GET")
        == seconds_before + 2
    )
    assert value("polydub_http_requests_total", route="/unit/boom", method="GET", status="500") >= 1
    # An unknown path is one label value, never the raw path.
    assert value("polydub_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert "/unit/nowhere/42" not in scrape.text
    assert (
        'polydub_http_requests_total{method="GET",route="/unit/items/{item_id}",status="200"}'
        in (scrape.text)
    )

    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [
        "GET /unit/items/{item_id}",
        "GET /unit/items/{item_id}",
        "GET /unit/boom",
        "GET",
    ]  # /metrics is not traced
    first, missing, failed, _ = spans
    assert first.kind is SpanKind.SERVER
    assert f"{first.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert first.parent is not None and f"{first.parent.span_id:016x}" == "b7ad6b7169203331"
    assert first.attributes is not None
    assert first.attributes["http.route"] == route
    assert first.attributes["http.response.status_code"] == 200
    # OpenTelemetry's stable HTTP semantic conventions, not the old names
    assert first.attributes["http.request.method"] == "GET"
    assert first.attributes["url.path"] == "/unit/items/7"
    assert first.attributes["url.scheme"] == "http"
    assert "http.method" not in first.attributes and "http.status_code" not in first.attributes
    assert missing.status.status_code is StatusCode.UNSET  # a 4xx is the client's error
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["http.response.status_code"] == 500


async def test_stage_outcomes() -> None:
    class Cancelled(Exception):
        pass

    before = {
        outcome: value("polydub_stage_duration_seconds_count", stage="unit", outcome=outcome)
        for outcome in ("ok", "error", "cancelled")
    }
    with time_stage("unit"):
        await asyncio.sleep(0.02)
    for error in (ValueError("x"), Cancelled()):
        with pytest.raises(type(error)), time_stage("unit"):
            raise error
    for outcome in ("ok", "error", "cancelled"):
        count = value("polydub_stage_duration_seconds_count", stage="unit", outcome=outcome)
        assert count == before[outcome] + 1
    ok = {"stage": "unit", "outcome": "ok"}
    assert value("polydub_stage_duration_seconds_bucket", **ok, le="+Inf") == (
        value("polydub_stage_duration_seconds_count", **ok)
    )
    assert value("polydub_stage_duration_seconds_sum", stage="unit", outcome="ok") >= 0.02


def test_triton_statistics_collector() -> None:
    # As tritonclient returns them with as_json=True: int64 counts are strings.
    stats: list[dict[str, Any]] = [
        {
            "name": "nllb_encoder",
            "version": "1",
            "inference_count": "12",
            "execution_count": "3",
            "inference_stats": {"queue": {"count": "12", "ns": "1500000000"}},
        },
        {"name": "nllb_encoder", "version": "2", "inference_count": "4", "execution_count": "4"},
        {"name": "vad", "version": "1", "inference_count": "0", "execution_count": "0"},
    ]
    collector = TritonStatistics()
    collector.update(stats)
    samples = {(m.name, s.labels["model"]): s.value for m in collector.collect() for s in m.samples}
    assert samples[("polydub_triton_inferences", "nllb_encoder")] == 16
    assert samples[("polydub_triton_executions", "nllb_encoder")] == 7
    assert samples[("polydub_triton_queue_seconds", "nllb_encoder")] == 1.5
    assert samples[("polydub_triton_inferences", "vad")] == 0
    # The process-wide instance is registered: its series appear in a scrape.
    TRITON_STATISTICS.update(stats[:1])
    assert value("polydub_triton_inferences_total", model="nllb_encoder") == 12
    TRITON_STATISTICS.update([])
