"""The Prometheus series of the api and the workers (prometheus_client's default registry).

Names are the contract with k8s/grafana-dashboard.json (a test checks every query there names a
series defined here). Label values are bounded sets: route templates, stage and model names.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# Seconds: a stage takes from tens of milliseconds (validate) to many minutes (a long video's
# synthesis); a Triton call from a millisecond to a whole Whisper window on a CPU.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
TRITON_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Each family is created (and registered with Prometheus) the first time code uses it, never at
# import: a process exports only the families of its own tier (the API no stage histograms or
# queue depth, the workers no HTTP request counters), and none that nothing there could fill.
# The names below are declarations for the type checker; ``__getattr__`` makes them on demand.
JOB_TRANSITIONS: Counter
JOBS_IN_FLIGHT: Gauge
STAGE_DURATION: Histogram
QUEUE_DEPTH: Gauge
TRITON_REQUEST_DURATION: Histogram
TRITON_REQUEST_BATCH: Histogram
TRITON_RETRIES: Counter
HTTP_REQUESTS: Counter
HTTP_REQUEST_DURATION: Histogram
TRITON_STATISTICS: TritonStatistics


def _job_transitions() -> Counter:
    return Counter(
        "polydub_job_transitions",
        "Jobs entering a state: queued (api), running / succeeded / failed / cancelled (workers and api), retried (nak for redelivery).",
        ["state"],
    )


def _jobs_in_flight() -> Gauge:
    return Gauge("polydub_jobs_in_flight", "Jobs this worker process is handling now.")


def _stage_duration() -> Histogram:
    return Histogram(
        "polydub_stage_duration_seconds",
        "Time one pipeline stage ran for one job (and one target language for per-language stages).",
        ["stage", "outcome"],
        buckets=STAGE_BUCKETS,
    )


def _queue_depth() -> Gauge:
    return Gauge(
        "polydub_queue_depth",
        "Jobs waiting or unacknowledged on the JetStream consumer (num_pending + num_ack_pending).",
        ["stream", "consumer"],
    )


def _triton_request_duration() -> Histogram:
    return Histogram(
        "polydub_triton_request_duration_seconds",
        "Client-side time of one Triton infer call, retries included.",
        ["model", "outcome"],
        buckets=TRITON_BUCKETS,
    )


def _triton_request_batch() -> Histogram:
    return Histogram(
        "polydub_triton_request_batch_size",
        "Rows in one Triton request (first dimension of its first input).",
        ["model"],
        buckets=BATCH_BUCKETS,
    )


def _triton_retries() -> Counter:
    return Counter(
        "polydub_triton_retries",
        "Triton infer attempts retried after a retryable error.",
        ["model"],
    )


def _http_requests() -> Counter:
    return Counter("polydub_http_requests", "API requests answered.", ["route", "method", "status"])


def _http_request_duration() -> Histogram:
    return Histogram(
        "polydub_http_request_duration_seconds",
        "API request time, until the response body is sent (a progress stream: its whole life).",
        ["route", "method"],
        buckets=HTTP_BUCKETS,
    )


def _triton_statistics() -> TritonStatistics:
    collector = TritonStatistics()
    REGISTRY.register(collector)
    return collector


_FACTORIES: dict[str, Callable[[], Any]] = {
    "JOB_TRANSITIONS": _job_transitions,
    "JOBS_IN_FLIGHT": _jobs_in_flight,
    "STAGE_DURATION": _stage_duration,
    "QUEUE_DEPTH": _queue_depth,
    "TRITON_REQUEST_DURATION": _triton_request_duration,
    "TRITON_REQUEST_BATCH": _triton_request_batch,
    "TRITON_RETRIES": _triton_retries,
    "HTTP_REQUESTS": _http_requests,
    "HTTP_REQUEST_DURATION": _http_request_duration,
    "TRITON_STATISTICS": _triton_statistics,
}
_made: dict[Callable[[], Any], Any] = {}
_lock = threading.Lock()
M = TypeVar("M")


def _once(factory: Callable[[], M]) -> M:
    with _lock:  # the worker's metrics thread and the event loop may ask at the same time
        if factory not in _made:
            _made[factory] = factory()
        made: M = _made[factory]
        return made


def __getattr__(name: str) -> Any:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _once(factory)


def every_metric() -> list[Any]:
    """Every family this module defines, created now (the dashboard's contract test)."""
    return [_once(factory) for factory in _FACTORIES.values()]


# How an exception ends a stage, by class name: the telemetry package stays below the
# orchestrator, so it names these rather than importing them.
_OUTCOMES = {"Cancelled": "cancelled", "Fenced": "fenced", "CancelledError": "interrupted"}


def outcome_of(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    return _OUTCOMES.get(type(error).__name__, "error")


@contextlib.contextmanager
def time_stage(stage: str) -> Iterator[None]:
    """Observe the block's duration under ``stage`` and the outcome its exception implies."""
    started = time.monotonic()
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        _once(_stage_duration).labels(stage, outcome_of(error)).observe(time.monotonic() - started)


def job_transition(state: str) -> None:
    _once(_job_transitions).labels(state).inc()


class TritonStatistics(Collector):
    """Triton's own cumulative counts per model, as last polled by the worker.

    ``inferences / executions`` is the batch size Triton's dynamic batcher achieved (Triton's own
    ``nv_inference_count`` / ``nv_inference_exec_count``, here for deployments that scrape only
    the polydub pods). Every worker reports the same server totals: sum and divide per worker
    or take max by model, never sum the counters across workers.
    """

    def __init__(self) -> None:
        self._models: dict[str, dict[str, float]] = {}

    def update(self, model_stats: Iterable[Mapping[str, Any]]) -> None:
        models: dict[str, dict[str, float]] = {}
        for entry in model_stats:
            name = str(entry.get("name", ""))
            if not name:
                continue
            queue = (entry.get("inference_stats") or {}).get("queue") or {}
            totals = models.setdefault(name, {"inferences": 0, "executions": 0, "queue": 0.0})
            # Versions of one model add up; JSON int64 fields arrive as strings.
            totals["inferences"] += int(entry.get("inference_count") or 0)
            totals["executions"] += int(entry.get("execution_count") or 0)
            totals["queue"] += int(queue.get("ns") or 0) / 1e9
        self._models = models

    def collect(self) -> Iterable[Metric]:
        inferences = CounterMetricFamily(
            "polydub_triton_inferences",
            "Inferences Triton ran per model (a request of batch n counts n), as Triton reports.",
            labels=["model"],
        )
        executions = CounterMetricFamily(
            "polydub_triton_executions",
            "Model executions Triton ran per model (one per dynamic batch), as Triton reports.",
            labels=["model"],
        )
        queued = CounterMetricFamily(
            "polydub_triton_queue_seconds",
            "Time requests waited in Triton's queues per model, as Triton reports.",
            labels=["model"],
        )
        for name, totals in sorted(self._models.items()):
            inferences.add_metric([name], totals["inferences"])
            executions.add_metric([name], totals["executions"])
            queued.add_metric([name], totals["queue"])
        yield inferences
        yield executions
        yield queued
