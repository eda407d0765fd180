"""``polydub.logging.RedactSecrets``: API keys and credential-like query parameters never reach
a log line, whichever logger wrote it and however it was formatted."""

from __future__ import annotations

import io
import json
import logging

from polydub.logging import REDACTED, JsonFormatter, RedactSecrets, redact

KEY = "pd_0123456789ab_" + "s" * 43


def test_redact_keeps_the_public_prefix_and_cuts_the_secrets() -> None:
    assert redact(f"/jobs?api_key={KEY}&limit=5") == f"/jobs?api_key={REDACTED}&limit=5"
    assert redact(f"Bearer {KEY}") == f"Bearer pd_0123456789ab_{REDACTED}"
    assert redact("/x?token=t1;secret=s2&apikey=k3") == (
        f"/x?token={REDACTED};secret={REDACTED}&apikey={REDACTED}"
    )
    assert redact("/jobs?monkey=1&keys=2&limit=3") == "/jobs?monkey=1&keys=2&limit=3"


def test_a_record_is_redacted_in_its_message_arguments_and_extras() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        # as uvicorn's access logger writes it: the path is an argument
        logger.warning(
            '%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", f"/a?api_key={KEY}", "1.1", 401
        )
        logger.warning("failed", extra={"error": f"bad key {KEY}"})
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["msg"] == f'1.2.3.4:5 - "GET /a?api_key={REDACTED} HTTP/1.1" 401'
    assert lines[1]["error"] == f"bad key pd_0123456789ab_{REDACTED}"
    assert "s" * 43 not in out.getvalue()
