"""W3C trace context in message headers: the API writes it into the outbox row, the relay into
the NATS message, the worker reads it back; the Triton client sends it as gRPC metadata.

The propagator is OpenTelemetry's configured one (W3C ``traceparent``/``tracestate`` and
``baggage`` unless OTEL_PROPAGATORS says otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter


class _HeaderGetter(Getter[Mapping[str, str]]):
    """Header names are case-insensitive on the wire (gRPC lowercases them, proxies may too)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        wanted = key.lower()
        for name, value in carrier.items():
            if name.lower() == wanted:
                return [value]
        return None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def inject_headers(
    headers: Mapping[str, str] | None = None, context: Context | None = None
) -> dict[str, str]:
    """``headers`` plus the trace context of ``context`` (the current one by default).

    Nothing is added when there is no span to continue, so the result is ``headers`` unchanged.
    """
    carrier = dict(headers or {})
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The remote parent carried by ``headers`` (an empty context when there is none)."""
    return propagate.extract(dict(headers or {}), getter=_GETTER)
