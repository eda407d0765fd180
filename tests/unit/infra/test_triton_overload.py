"""Overload without amplification, the logic: a retry budget shared by a process, deadlines from
the work asked, a spent budget surfacing as a retryable error, and a burst that stops whole.
(The same against a real Triton: tests/integration/models/test_triton_overload.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from polydub.errors import Overloaded, RetryableError, ServiceUnavailable
from polydub.infra.triton import (
    Deadline,
    InferenceClient,
    RetryPolicy,
    WorkDeadlines,
    process_retry_budget,
)
from polydub.orchestrator.inference.translation import expected_tokens, gather_or_cancel
from polydub.retry import RetryBudget

pytestmark = pytest.mark.unit


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_allows_a_minimum_then_a_ratio_of_the_requests() -> None:
    clock = _Clock()
    budget = RetryBudget(ratio=0.1, window=60.0, min_retries=2, clock=clock)
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]
    for _ in range(30):
        budget.record_request()
    # 2 + 10 % of 30 = 5 retries in the window, 2 already spent
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]
    assert budget.retries() == 5 and budget.refused == 2


def test_budget_forgets_what_left_the_window() -> None:
    clock = _Clock()
    budget = RetryBudget(ratio=0.5, window=60.0, min_retries=0, slots=6, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert budget.try_retry() and budget.try_retry() and not budget.try_retry()
    clock.now += 30
    assert not budget.try_retry()  # still inside the window
    clock.now += 31
    assert budget.retries() == 0 and budget.available() == 0  # requests expired with them
    budget.record_request()
    budget.record_request()
    assert budget.try_retry() and not budget.try_retry()


async def test_every_client_of_a_process_shares_one_budget() -> None:
    own = RetryBudget()
    async with (
        InferenceClient("127.0.0.1:1") as first,
        InferenceClient("127.0.0.1:2") as second,
        InferenceClient("127.0.0.1:3", budget=own) as third,
    ):
        assert first.budget is second.budget is process_retry_budget()
        assert third.budget is own


def test_deadline_grows_with_the_work_in_flight() -> None:
    deadline = Deadline(floor=2.0, per_unit=0.5, cap=100.0)
    assert deadline.seconds(0) == 2.0 and deadline.seconds(10) == 7.0
    assert deadline.seconds(10_000) == 100.0
    work = WorkDeadlines(deadline)
    with work.admit(10) as first:
        with work.admit(4) as second:
            assert (first, second) == (7.0, 9.0)  # the second waits behind the first
        assert work.units == 10
    assert work.units == 0


def test_expected_tokens_follow_the_servers_default_length() -> None:
    assert expected_tokens("Hello", 40) == 40
    assert expected_tokens("Hello", 999) == 256  # the server's max_length_cap
    assert expected_tokens("x" * 30, None) == 2 * (10 + 2) + 16
    assert expected_tokens("x" * 2000, None) == 256
    assert expected_tokens("a longer sentence " * 4, None) > expected_tokens("short", None)


class _Server:
    """Stands in for tritonclient's aio client: every infer fails with ``status``."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.timeouts: list[float | None] = []

    async def infer(self, *args: Any, client_timeout: float | None = None, **kw: Any) -> Any:
        self.timeouts.append(client_timeout)
        raise InferenceServerException("no", status=self.status)

    async def is_server_ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _client(server: _Server, budget: RetryBudget) -> InferenceClient:
    policy = RetryPolicy(attempts=4, base_delay=0.0, max_delay=0.0)
    client = InferenceClient("127.0.0.1:1", retry=policy, budget=budget)
    client._client = server
    return client


async def _infer(client: InferenceClient, deadline: float | None = None) -> None:
    await client.infer("nllb", {"x": np.zeros((1, 1), np.float32)}, ["y"], deadline=deadline)


async def test_a_spent_budget_surfaces_a_retryable_error_instead_of_retrying() -> None:
    server = _Server("StatusCode.UNAVAILABLE")
    budget = RetryBudget(ratio=0.0, window=60.0, min_retries=5)
    client = _client(server, budget)
    with pytest.raises(ServiceUnavailable) as last:  # the policy's 4 attempts, 3 retries
        await _infer(client)
    assert last.value.code == "triton_unavailable" and len(server.timeouts) == 4
    with pytest.raises(Overloaded) as spent:  # the 2 retries left in the budget, then no more
        await _infer(client)
    assert spent.value.code == "triton_retry_budget_spent"
    assert isinstance(spent.value, RetryableError)  # the stage naks: redelivered later
    assert len(server.timeouts) == 4 + 3 and budget.refused == 1
    with pytest.raises(Overloaded):
        await _infer(client)
    assert len(server.timeouts) == 4 + 3 + 1 and budget.retries() == 5


async def test_an_expired_deadline_is_named_and_each_attempt_gets_the_callers_deadline() -> None:
    server = _Server("StatusCode.DEADLINE_EXCEEDED")
    client = _client(server, RetryBudget(ratio=0.0, window=60.0, min_retries=1))
    with pytest.raises(Overloaded) as caught:
        await _infer(client, deadline=7.5)
    assert server.timeouts == [7.5, 7.5]  # one retry, then the budget is spent
    assert caught.value.detail == {"error": "triton_deadline_exceeded"}
    server.timeouts.clear()
    with pytest.raises(Overloaded):
        await _infer(client)
    assert server.timeouts == [client.timeout]  # no deadline given: the client's


async def test_the_first_error_of_a_burst_cancels_the_rest() -> None:
    cancelled: list[int] = []

    async def segment(i: int) -> int:
        try:
            if i == 3:
                raise ServiceUnavailable("deadline", code="triton_deadline_exceeded")
            await asyncio.sleep(60)
            return i
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(gather_or_cancel([segment(i) for i in range(8)]), 10)
    assert sorted(cancelled) == [0, 1, 2, 4, 5, 6, 7]
    assert await gather_or_cancel([asyncio.sleep(0, i) for i in range(3)]) == [0, 1, 2]
