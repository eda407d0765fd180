"""Structured logging: one JSON object a line, carrying the job id of the work in hand.

The job id (and stage, attempt, ...) lives in a context variable, so every log line written while a
job is handled carries it without passing a logger around: ``with log_context(job_id=...):``.

Secrets never reach a log line: ``RedactSecrets`` (on the process's handler, so it sees every
logger's records, uvicorn's access log included) cuts the secret part of API keys
(``pd_<prefix>_<secret>``, wherever they appear) and the values of credential-like query
parameters (``?api_key=``, ``token``, ``secret``, ...).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "polydub_log_context", default=MappingProxyType({})
)

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (job_id, stage, attempt, ...) to every log line written inside the block."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


_API_KEY = re.compile(r"\b(pd_[0-9a-f]{12}_)[A-Za-z0-9_-]{20,}")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:api[_-]?key|apikey|key|token|access[_-]?token|secret|password|signature)=)"
    r"[^&;\s\"']*"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` without the secret part of any API key or credential-like query parameter."""
    text = _API_KEY.sub(r"\1" + REDACTED, text)
    return _SECRET_PARAM.sub(r"\1" + REDACTED, text)


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """Redacts a record's message, its arguments (kept in place: uvicorn's access formatter
    unpacks them) and its string extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redacted(v) for k, v in record.args.items()}
        for name, value in list(record.__dict__.items()):
            if name not in _RESERVED and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_context.get(),
        }
        # Fields passed with logger.info(..., extra={...}) come through as record attributes.
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Configure the root logger once per process (api, worker, CLI)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries are chatty at INFO; their warnings still come through.
    for noisy in ("urllib3", "asyncio", "nats", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
