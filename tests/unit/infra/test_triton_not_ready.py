"""A model "not found" is transient while Triton is not ready (stopping or starting), and a
configuration error when a ready Triton lacks it (the TTS pool reloads on that code)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from polydub.errors import ConfigurationError, ServiceUnavailable
from polydub.infra.triton import InferenceClient, RetryPolicy

pytestmark = pytest.mark.unit


class _Server:
    """Stands in for tritonclient's aio client: every infer is NOT_FOUND, as while unloading."""

    def __init__(self, ready: bool) -> None:
        self.ready = ready
        self.calls = 0

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise InferenceServerException(
            "Request for unknown model: 'whisper' has no available versions",
            status="StatusCode.NOT_FOUND",
        )

    async def is_server_ready(self) -> bool:
        return self.ready

    async def close(self) -> None:
        return None


async def _infer(ready: bool) -> tuple[Exception, int]:
    client = InferenceClient("127.0.0.1:1", retry=RetryPolicy(attempts=3, base_delay=0.0))
    server = _Server(ready)
    client._client = server
    with pytest.raises(Exception) as caught:
        await client.infer("whisper", {"x": np.zeros((1, 4), np.float32)}, ["y"])
    return caught.value, server.calls


async def test_not_found_while_triton_is_not_ready_is_retried_then_retryable() -> None:
    error, calls = await _infer(ready=False)
    assert isinstance(error, ServiceUnavailable) and error.code == "triton_not_ready"
    assert calls == 3  # the client's own retries, then the job is nak'd and redelivered


async def test_not_found_on_a_ready_triton_stays_a_configuration_error() -> None:
    error, calls = await _infer(ready=True)
    assert isinstance(error, ConfigurationError) and error.code == "model_not_found"
    assert calls == 1
