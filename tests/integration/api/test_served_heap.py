"""The served API freezes the heap its startup built (``settle_heap``): a full garbage collection
under load no longer walks it, which stalled every request of the process for 75-130 ms every
few seconds (issue 17, the status p99)."""

from __future__ import annotations

import gc

import httpx
import pytest

from polydub.api.app import create_app, create_served_app
from polydub.settings import Settings
from tests.integration.api.helpers import Served

pytestmark = pytest.mark.integration


async def test_the_served_api_freezes_its_startup_heap(api_settings: Settings, api: Served) -> None:
    # ``api`` brings the servers up and the schema migrated.
    settings = api_settings.model_copy(update={"api_run_workers": False})
    before = gc.get_freeze_count()
    shared = Served(create_app(settings))  # tests share their process: nothing frozen there
    await shared.start()
    await shared.stop()
    assert gc.get_freeze_count() <= before

    served = Served(create_served_app(settings))
    await served.start()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > before + 10_000  # the modules and the app, not a handful of objects
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            for _ in range(20):
                assert (await client.get("/health/live")).status_code == 200
        assert gc.get_freeze_count() <= frozen  # once, at startup (frozen objects still die)
    finally:
        await served.stop()
        gc.unfreeze()  # the test process's own heap goes back to the collector
