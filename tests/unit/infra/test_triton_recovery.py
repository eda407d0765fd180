"""A python model whose stub died is reloaded by the client: once per failure burst, at most
``max_reloads`` times per window (the real stub kill is tests/integration/models/
test_whisper_stub_recovery.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from polydub.errors import ServiceUnavailable
from polydub.infra.triton import InferenceClient, RetryPolicy
from polydub.infra.triton_recovery import RELOAD_PARAMETER, StubRecovery, stub_unhealthy

pytestmark = pytest.mark.unit

UNHEALTHY = "Stub process 'whisper_0_0' is not healthy."


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Reloads:
    def __init__(self, clock: _Clock, fail: bool = False) -> None:
        self.models: list[str] = []
        self.clock = clock
        self.fail = fail

    async def __call__(self, model: str) -> None:
        await asyncio.sleep(0.01)  # concurrent failures pile up behind the first reload
        self.models.append(model)
        self.clock.now += 1.0
        if self.fail:
            raise RuntimeError("load failed")


def test_the_stub_messages_are_recognised() -> None:
    assert stub_unhealthy(f"[StatusCode.INTERNAL] {UNHEALTHY}")
    assert stub_unhealthy("Stub process is not healthy.")
    assert not stub_unhealthy("[StatusCode.UNAVAILABLE] Request for unknown model")


async def test_a_burst_of_failures_reloads_once() -> None:
    clock = _Clock()
    reloads = _Reloads(clock)
    recovery = StubRecovery(reloads, clock=clock)
    sent = clock.now
    errors = await asyncio.gather(*(recovery.recover("whisper", sent, UNHEALTHY) for _ in range(8)))
    assert reloads.models == ["whisper"]
    assert all(isinstance(e, ServiceUnavailable) and e.retryable for e in errors)
    assert {e.code for e in errors} == {"triton_stub_reloaded"}
    assert recovery.reloaded == 1


async def test_reloads_are_bounded_per_window() -> None:
    clock = _Clock()
    reloads = _Reloads(clock)
    recovery = StubRecovery(reloads, max_reloads=2, window_s=60.0, clock=clock)
    codes = []
    for _ in range(4):  # the stub dies again after every reload
        codes.append((await recovery.recover("whisper", clock.now, UNHEALTHY)).code)
        clock.now += 5.0
    assert codes == ["triton_stub_reloaded"] * 2 + ["triton_stub_unhealthy"] * 2
    assert len(reloads.models) == 2
    clock.now += 60.0  # the window has passed: one more reload is allowed
    assert (await recovery.recover("whisper", clock.now, UNHEALTHY)).code == "triton_stub_reloaded"
    # another model has a budget of its own
    assert (await recovery.recover("nllb", clock.now, UNHEALTHY)).code == "triton_stub_reloaded"
    assert reloads.models == ["whisper"] * 3 + ["nllb"]


async def test_a_failed_reload_counts_against_the_budget() -> None:
    clock = _Clock()
    reloads = _Reloads(clock, fail=True)
    recovery = StubRecovery(reloads, max_reloads=1, clock=clock)
    first = await recovery.recover("whisper", clock.now, UNHEALTHY)
    second = await recovery.recover("whisper", clock.now, UNHEALTHY)
    assert first.code == second.code == "triton_stub_unhealthy"
    assert "load failed" in first.message and len(reloads.models) == 1


class _DeadStub:
    """tritonclient's aio client with one dead stub: infer fails until the model is loaded."""

    def __init__(self) -> None:
        self.healthy = False
        self.loads = 0
        self.calls = 0

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if not self.healthy:
            raise InferenceServerException(UNHEALTHY, status="StatusCode.INTERNAL")
        return _Result()

    async def get_model_config(self, model: str, as_json: bool = False) -> dict[str, Any]:
        return {"config": {"name": model, "backend": "python"}}

    async def load_model(self, model: str, config: str | None = None) -> None:
        # with the model's config: Triton reloads even when no file changed
        assert config is not None and json.loads(config)["name"] == model
        assert RELOAD_PARAMETER in json.loads(config)["parameters"]
        self.loads += 1
        self.healthy = True

    async def close(self) -> None:
        return None


class _Result:
    def as_numpy(self, name: str) -> Any:
        return np.ones(2, np.float32)


async def test_the_client_reloads_and_its_retry_succeeds() -> None:
    client = InferenceClient("127.0.0.1:1", retry=RetryPolicy(attempts=3, base_delay=0.0))
    server = _DeadStub()
    client._client = server
    out = await client.infer("whisper", {"x": np.zeros((1, 4), np.float32)}, ["y"])
    assert out["y"].tolist() == [1.0, 1.0]
    assert server.loads == 1 and server.calls == 2


async def test_a_reload_by_another_process_since_the_request_is_not_done_again() -> None:
    """Each worker process has its own StubRecovery: the reload time Triton's config carries
    (written by whichever process reloaded) keeps the others from reloading the model again."""
    clock = _Clock()
    wall = 5_000.0  # wall-clock seconds; clock.now 100.0 is the same instant
    stamps: dict[str, float] = {}

    async def last_reload(model: str) -> float | None:
        return stamps.get(model)

    reloads = _Reloads(clock)
    recovery = StubRecovery(
        reloads, last_reload=last_reload, clock=clock, wall=lambda: wall + clock.now - 100.0
    )
    sent = clock.now
    clock.now += 2.0
    stamps["whisper"] = wall + 1.0  # another process reloaded 1 s after the request was sent
    error = await recovery.recover("whisper", sent, UNHEALTHY)
    assert error.code == "triton_stub_reloaded" and error.retryable
    assert reloads.models == [] and recovery.reloaded == 0
    # a request sent after that reload failed: the model died again, this process reloads
    later = clock.now
    assert (await recovery.recover("whisper", later, UNHEALTHY)).code == "triton_stub_reloaded"
    assert reloads.models == ["whisper"]
    # no reload known (never reloaded, or the config cannot be read): reload as before
    assert (await recovery.recover("nllb", clock.now, UNHEALTHY)).code == "triton_stub_reloaded"
    assert reloads.models == ["whisper", "nllb"]


async def test_waiting_for_a_reload_ends_with_the_request_deadline() -> None:
    clock = _Clock()
    gate = asyncio.Event()

    async def slow_reload(model: str) -> None:
        await gate.wait()

    recovery = StubRecovery(slow_reload, clock=clock)
    first = asyncio.create_task(recovery.recover("whisper", clock.now, UNHEALTHY))
    await asyncio.sleep(0)  # the first failure holds the lock, reloading
    waited = await asyncio.wait_for(
        recovery.recover("whisper", clock.now, UNHEALTHY, wait_s=0.05), timeout=2.0
    )
    assert waited.code == "triton_stub_reloading" and waited.retryable
    assert not first.done()
    gate.set()
    assert (await first).code == "triton_stub_reloaded"
    # a deadline already spent does not wait at all
    gate.clear()
    again = asyncio.create_task(recovery.recover("whisper", clock.now + 1, UNHEALTHY))
    await asyncio.sleep(0)
    spent = await recovery.recover("whisper", clock.now + 1, UNHEALTHY, wait_s=-1.0)
    assert spent.code == "triton_stub_reloading"
    gate.set()
    await again
    # with no reload under way, a late failure still reloads (or no one would)
    late = await recovery.recover("whisper", clock.now + 2, UNHEALTHY, wait_s=-1.0)
    assert late.code == "triton_stub_reloaded" and recovery.reloaded == 3


class _ReloadedElsewhere(_DeadStub):
    """Another worker reloads the model right after this one's request failed."""

    def __init__(self) -> None:
        super().__init__()
        self.stamp: str | None = None

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().infer(*args, **kwargs)
        finally:
            if self.stamp is None:
                self.stamp = str(time.time_ns())
                self.healthy = True

    async def get_model_config(self, model: str, as_json: bool = False) -> dict[str, Any]:
        parameters = {RELOAD_PARAMETER: {"string_value": self.stamp}} if self.stamp else {}
        return {"config": {"name": model, "backend": "python", "parameters": parameters}}


async def test_the_client_reads_a_reload_of_another_worker_from_the_config() -> None:
    client = InferenceClient("127.0.0.1:1", retry=RetryPolicy(attempts=3, base_delay=0.0))
    server = _ReloadedElsewhere()
    client._client = server
    out = await client.infer("whisper", {"x": np.zeros((1, 4), np.float32)}, ["y"])
    assert out["y"].tolist() == [1.0, 1.0]
    assert server.loads == 0 and server.calls == 2  # no reload of its own, one retry
    assert client.recovery.reloaded == 0
