"""A killed python-backend stub is recovered from without a manual reload.

The ``whisper`` model's instances run in stub processes (``triton_python_backend_stub``, children
of tritonserver). When one is killed (the kernel's OOM killer did it in production), Triton's
python backend answers every later request of that instance with "Stub process 'whisper_0_0' is
not healthy" and never starts it again. The client (``polydub.infra.triton_recovery``) reloads
the model on that error, once per failure burst and a bounded number of times per window. Here
a real Triton's whisper stubs are SIGKILLed: a client that may not reload keeps failing, the
default client brings the model back and its request succeeds.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from polydub.errors import ServiceUnavailable
from polydub.export.spec import Preset, Target
from polydub.export.whisper import WhisperExporter
from polydub.export.whisper_graphs import BLS_MODEL
from polydub.infra.triton import InferenceClient, RetryPolicy
from polydub.infra.triton_recovery import StubRecovery
from polydub.orchestrator.inference.asr import AsrClient
from polydub.retry import RetryBudget
from polydub.settings import Settings
from tests.checkout import place_templates
from tests.conftest import own_triton, scratch_dir
from tests.speech_audio import MALE, speak

pytestmark = pytest.mark.integration
MAX_NEW_TOKENS = 8  # random weights: the text is noise, only success matters


@pytest.fixture(scope="module")
def stub_settings(stack_settings: Settings) -> Iterator[Settings]:
    # A Triton of its own: its stubs are killed, which must not disturb other tests' models.
    root = scratch_dir("polydub-stub-")
    with own_triton(stack_settings, root) as settings:
        exporter = WhisperExporter()
        report = exporter.export(
            exporter.defaults(Preset.TINY), Target.CPU, settings.model_repository
        )
        place_templates(settings.model_repository, report.models)
        yield settings


@pytest.fixture
async def triton(stub_settings: Settings) -> AsyncIterator[InferenceClient]:
    # a budget of its own: the process's shared one may be spent by other tests
    client = InferenceClient(
        stub_settings.triton_url, retry=RetryPolicy(attempts=3), budget=RetryBudget(min_retries=100)
    )
    await client.load_model(BLS_MODEL)
    yield client
    await client.close()


def whisper_stubs(repository: Path) -> list[psutil.Process]:
    """The python-backend stubs of this Triton's ``whisper`` instances (by their argv: the
    stub binary, the model's folder in this repository, the instance name)."""
    folder = str(repository / BLS_MODEL)
    stubs = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if (
            argv
            and argv[0].endswith("triton_python_backend_stub")
            and any(a.startswith(folder) for a in argv)
            and any(a.startswith(f"{BLS_MODEL}_") for a in argv)
        ):
            stubs.append(proc)
    return stubs


def kill_stubs(repository: Path) -> set[int]:
    stubs = whisper_stubs(repository)
    assert stubs, "no whisper stub process found"
    for proc in stubs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(stubs, timeout=10)
    return {p.pid for p in stubs}


async def test_a_killed_stub_is_reloaded_and_requests_succeed_again(
    triton: InferenceClient, stub_settings: Settings
) -> None:
    speech = speak("A stub was killed and came back.", MALE)
    healthy = AsrClient(triton, max_new_tokens=MAX_NEW_TOKENS)
    before = await healthy.transcribe(speech, language="eng")
    killed = kill_stubs(stub_settings.model_repository)

    # Without reloads (the behaviour before): every request fails, the model stays broken.
    stuck = InferenceClient(
        stub_settings.triton_url,
        retry=RetryPolicy(attempts=2, base_delay=0.0),
        budget=RetryBudget(min_retries=100),
        recovery=StubRecovery(triton.load_model, max_reloads=0),
    )
    try:
        for _ in range(2):
            with pytest.raises(ServiceUnavailable) as failed:
                await AsrClient(stuck, max_new_tokens=MAX_NEW_TOKENS).transcribe(
                    speech, language="eng"
                )
            assert failed.value.code == "triton_stub_unhealthy"
            assert "is not healthy" in failed.value.message
    finally:
        await stuck.close()

    # The default client: a burst of concurrent requests triggers one reload, all succeed.
    results = await asyncio.gather(*(healthy.transcribe(speech, language="eng") for _ in range(4)))
    assert triton.recovery.reloaded == 1
    assert all(r.tokens == before.tokens for r in results)
    fresh = {p.pid for p in whisper_stubs(stub_settings.model_repository)}
    assert fresh and not fresh & killed  # new stub processes serve the model
    assert await triton.is_model_ready(BLS_MODEL)


async def test_without_reloads_left_the_error_stays_retryable(
    triton: InferenceClient, stub_settings: Settings
) -> None:
    speech = np.zeros(16000, np.float32)
    client = AsrClient(triton, max_new_tokens=MAX_NEW_TOKENS)
    await client.transcribe(speech, language="eng")
    triton.recovery.max_reloads = 0  # the window's reloads are spent
    kill_stubs(stub_settings.model_repository)
    with pytest.raises(ServiceUnavailable) as failed:
        await client.transcribe(speech, language="eng")
    assert failed.value.retryable and failed.value.code == "triton_stub_unhealthy"
    triton.recovery.max_reloads = 1
    await client.transcribe(speech, language="eng")  # the next window's reload brings it back
