"""Webhook signatures per the Standard Webhooks spec, checked with the ``standardwebhooks``
package as a receiver would use it, and the event types a job's end is named by."""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from polydub.api.webhooks import event_type, secret_bytes, standard_headers

BODY = b'{"type": "job.succeeded", "job": {"name": "\\u00f1"}}'


def test_a_new_secret_verifies_with_the_package_as_is() -> None:
    raw = secrets.token_bytes(32)
    secret = "whsec_" + base64.b64encode(raw).decode()
    assert secret_bytes(secret) == raw
    now = int(time.time())
    headers = standard_headers(secret, "42", now, BODY)
    assert headers["webhook-id"] == "42" and headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "job.succeeded",
        "job": {"name": "ñ"},
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    stale = standard_headers(secret, "42", now - 3600, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, stale)


def test_an_older_url_safe_secret_signs_with_its_real_bytes() -> None:
    # Keys made before this release hold token_urlsafe secrets: "-" and "_" in them.
    raw = bytes(range(250, 256)) * 5 + b"\xfb\xff"
    old = "whsec_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "-" in old or "_" in old
    assert secret_bytes(old) == raw
    headers = standard_headers(old, "7", int(time.time()), BODY)
    # The receiver's form of that secret: the same bytes in standard base64.
    standard = "whsec_" + base64.b64encode(raw).decode()
    Webhook(standard).verify(BODY, headers)


@pytest.mark.parametrize(
    ("state", "language", "statuses", "expected"),
    [
        ("succeeded", "", ["succeeded", "succeeded"], "job.succeeded"),
        ("succeeded", "", ["succeeded", "failed"], "job.partially_succeeded"),
        ("failed", "", ["failed", "failed"], "job.failed"),
        ("cancelled", "", ["cancelled"], "job.cancelled"),
        ("failed", "fra", ["succeeded", "failed"], "job.language.failed"),
        ("succeeded", "spa", ["succeeded", "running"], "job.language.succeeded"),
        # A review job: its segments wait for a person, nothing has finished.
        ("review", "", ["review", "failed"], "job.review_ready"),
        ("review", "spa", ["review", "running"], "job.language.review_ready"),
    ],
)
def test_event_types(state: str, language: str, statuses: list[str], expected: str) -> None:
    job: dict[str, Any] = {"targets": [{"status": s} for s in statuses]}
    assert event_type(state, language, job) == expected
