"""Reading the served manifest: "Triton cannot say now" must not read as "no random weights".

The restart drill failed a language with ``nothing_synthesized``: during Triton's restart the
worker read an empty manifest, cached it, and the random-weights warning became a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.errors import ConfigurationError, PolydubError, ServiceUnavailable
from polydub.infra.triton import InferenceClient, RetryPolicy
from polydub.manifest import Manifest, ServedModel, fetch_manifest
from polydub.stack.isolated import free_port

pytestmark = pytest.mark.unit

SERVED = Manifest(models={"nllb": ServedModel("nllb", "nllb", "random (tiny)", "MIT", True)})


class Answers:
    """An ``Infer`` that gives one answer: a manifest's JSON, or an error."""

    def __init__(self, answer: bytes | PolydubError) -> None:
        self.answer = answer

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: list[str]
    ) -> dict[str, NDArray[Any]]:
        if isinstance(self.answer, PolydubError):
            raise self.answer
        return {"manifest": np.array([self.answer], dtype=np.object_)}


async def test_the_served_manifest_is_read() -> None:
    assert await fetch_manifest(Answers(SERVED.to_json().encode())) == SERVED


async def test_a_repository_without_a_manifest_reads_as_empty() -> None:
    missing = ConfigurationError("unknown model", code="model_not_found")
    assert await fetch_manifest(Answers(missing)) == Manifest()
    assert await fetch_manifest(Answers(b"{not json")) == Manifest()


async def test_a_triton_that_cannot_answer_now_raises_its_retryable_error() -> None:
    restarting = ServiceUnavailable("Triton is not ready", code="triton_not_ready")
    with pytest.raises(ServiceUnavailable):
        await fetch_manifest(Answers(restarting))


async def test_no_server_at_all_is_retryable_too() -> None:
    """Through the real gRPC client, to a port nothing listens on."""
    async with InferenceClient(
        f"127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=1), timeout=2
    ) as client:
        with pytest.raises(PolydubError) as caught:
            await fetch_manifest(client)
    assert caught.value.retryable
