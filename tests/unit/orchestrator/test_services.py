"""The worker's model clients take their deadlines from the worker's own settings (async: the
clients create their asyncio primitives, as they do in the worker's loop)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from polydub.infra.storage import ObjectStore
from polydub.infra.triton import InferenceClient, retry_budget
from polydub.orchestrator.services import Services
from polydub.orchestrator.state import JobStore
from polydub.settings import Settings

pytestmark = pytest.mark.unit


async def test_clients_follow_the_settings_they_are_given() -> None:
    settings = Settings(
        triton_deadline_floor_seconds=7.0,
        triton_deadline_max_seconds=99.0,
        triton_translation_seconds_per_token=0.5,
        triton_tts_seconds_per_token=0.25,
        triton_asr_seconds_per_audio_second=2.0,
        triton_translation_max_in_flight=3,
        triton_retry_budget_min_retries=4,
    )
    triton = InferenceClient("127.0.0.1:1", budget=retry_budget(settings))
    services = Services.create(settings, JobStore(cast(Any, None)), ObjectStore(settings), triton)
    assert services.translation.deadlines.deadline.seconds(10) == 7.0 + 0.5 * 10
    assert services.tts.deadlines.deadline.seconds(4) == 7.0 + 0.25 * 4
    assert services.asr.deadlines.deadline.seconds(1000) == 99.0  # capped
    assert triton.budget.available() == 4  # min_retries, no requests yet
