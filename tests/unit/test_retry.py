"""The one backoff policy (polydub.retry), and that each retry loop's delays come from it."""

from __future__ import annotations

import pytest

from polydub.api.webhooks import backoff_seconds
from polydub.client._common import ApiError, backoff
from polydub.infra.triton import RetryPolicy
from polydub.orchestrator.worker import WorkerOptions
from polydub.retry import Backoff
from polydub.settings import Settings

pytestmark = pytest.mark.unit


def test_the_delay_doubles_from_base_up_to_the_cap() -> None:
    policy = Backoff(0.5, 3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(0) == 0.5  # "before the first retry", however it is counted
    assert policy.delay(500) == 3.0  # no overflow however long it keeps failing


def test_jitter_stays_within_its_band() -> None:
    for retry in range(1, 8):
        ceiling = Backoff(1.0, 10.0).delay(retry)
        for _ in range(50):
            assert 0 <= Backoff(1.0, 10.0, "full").delay(retry) <= ceiling
            assert ceiling / 2 <= Backoff(1.0, 10.0, "equal").delay(retry) <= ceiling


def test_full_jitter_spreads_retries_out() -> None:
    delays = {Backoff(1.0, 10.0, "full").delay(4) for _ in range(20)}
    assert len(delays) > 1


def test_every_retry_loop_uses_it() -> None:
    # The worker's nak delay: exact, from retry_base_delay, capped by retry_max_delay.
    options = WorkerOptions(retry_base_delay=2.0, retry_max_delay=60.0)
    assert [options.retry_delay(d) for d in (1, 2, 3, 10)] == [2.0, 4.0, 8.0, 60.0]
    # Triton: full jitter under base * 2**attempt, attempt 0 being the first try.
    triton = RetryPolicy(base_delay=0.2, max_delay=3.0)
    assert all(0 <= triton.delay(0) <= 0.2 for _ in range(20))
    assert all(0 <= triton.delay(9) <= 3.0 for _ in range(20))
    # The client SDK: exponential, unless the server said Retry-After.
    assert [backoff(n, None) for n in (1, 2, 5, 9)] == [0.5, 1.0, 8.0, 8.0]
    limited = ApiError(429, "rate_limited", "slow down", retry_after=7.0)
    assert backoff(1, limited) == 7.0
    # Webhooks: equal jitter under the settings' base and cap.
    settings = Settings(api_webhook_backoff_base_seconds=4, api_webhook_backoff_max_seconds=20)
    assert all(4 <= backoff_seconds(2, settings) <= 8 for _ in range(20))
    assert all(10 <= backoff_seconds(9, settings) <= 20 for _ in range(20))
