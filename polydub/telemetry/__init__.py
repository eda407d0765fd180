"""Traces (OpenTelemetry, exported over OTLP) and metrics (Prometheus) for the api and workers.

- ``tracing``: one TracerProvider per process (service ``polydub-api`` or ``polydub-worker``),
  off unless ``otel_endpoint`` is set; ``span()`` is the one way code opens a span.
- ``propagation``: W3C trace context in and out of NATS message headers (and the outbox row
  that becomes one), so one trace follows a job from the API request to its Triton calls.
- ``metrics``: the Prometheus series both tiers export; ``http`` the API's middleware and
  ``/metrics``; ``worker`` the worker's metrics server and its queue / Triton pollers.
"""

from polydub.telemetry.propagation import extract_context, inject_headers
from polydub.telemetry.tracing import (
    configure_tracing,
    force_flush,
    mark_error,
    shutdown_tracing,
    span,
)

__all__ = [
    "configure_tracing",
    "extract_context",
    "force_flush",
    "inject_headers",
    "mark_error",
    "shutdown_tracing",
    "span",
]
