"""Triton scale-out that receives traffic (issue #15, item 4): one InferenceClient whose target
resolves to several Tritons (the chart's headless Service, here a fixed ``ipv4:`` list) spreads
its calls over all of them, instead of pinning its one connection to one server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from polydub.infra.triton import InferenceClient
from polydub.manifest import (
    MANIFEST_MODEL,
    Manifest,
    ServedModel,
    fetch_manifest,
    manifest_path,
)
from polydub.settings import Settings
from tests.checkout import place_templates
from tests.conftest import own_triton, scratch_dir

pytestmark = pytest.mark.integration

REQUESTS = 40


MANIFEST = Manifest(
    {"nllb": ServedModel("nllb", "nllb", "random weights (tiny)", "CC-BY-NC-4.0", True)}
)


def _serve_manifest(settings: Settings) -> None:
    place_templates(settings.model_repository, [MANIFEST_MODEL])
    manifest_path(settings.model_repository).write_text(MANIFEST.to_json())
    httpx.post(
        f"{settings.triton_http_url}/v2/repository/models/{MANIFEST_MODEL}/load", timeout=120
    ).raise_for_status()


@pytest.fixture(scope="module")
def two_tritons(stack_settings: Settings) -> Iterator[list[Settings]]:
    roots = [scratch_dir("polydub-balance-") for _ in range(2)]
    servers = [own_triton(stack_settings, root) for root in roots]
    # Started side by side: each waits mostly on its python backend stub.
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        started = list(pool.map(stack.enter_context, servers))
        list(pool.map(_serve_manifest, started))
        yield started


def _successes(settings: Settings) -> int:
    stats = httpx.get(f"{settings.triton_http_url}/v2/models/{MANIFEST_MODEL}/stats", timeout=10)
    stats.raise_for_status()
    entry = stats.json()["model_stats"][0]
    return int(entry["inference_stats"]["success"]["count"])


async def test_one_client_spreads_its_calls_over_every_triton(
    two_tritons: list[Settings],
) -> None:
    before = [_successes(s) for s in two_tritons]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.triton_grpc_port}" for s in two_tritons)
    async with InferenceClient(target) as client:
        assert await client.is_ready()
        # the real call the API and workers make
        assert await fetch_manifest(client) == MANIFEST
        request = {"format": np.array([b"json"], dtype=np.object_)}
        for _ in range(REQUESTS - 1):  # one after another: no concurrency needed to spread
            await client.infer(MANIFEST_MODEL, request, ["manifest"])
    served = [_successes(s) - b for s, b in zip(two_tritons, before, strict=True)]
    assert sum(served) == REQUESTS
    # round robin: each server gets its half, give or take the calls made while the second
    # connection was still being set up
    assert min(served) >= REQUESTS * 3 // 8, served


async def test_the_default_policy_would_pin_one_server(two_tritons: list[Settings]) -> None:
    """What the chart had: one connection, every call to one server (the test above is not
    passing by luck of the scheduler)."""
    import tritonclient.grpc.aio as grpcclient

    before = [_successes(s) for s in two_tritons]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.triton_grpc_port}" for s in two_tritons)
    client = grpcclient.InferenceServerClient(target)  # tritonclient's defaults: pick_first
    try:
        tensor = grpcclient.InferInput("format", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"json"], dtype=np.object_))
        await asyncio.gather(*(client.infer(MANIFEST_MODEL, [tensor]) for _ in range(10)))
    finally:
        await client.close()
    served = sorted(_successes(s) - b for s, b in zip(two_tritons, before, strict=True))
    assert served == [0, 10]
