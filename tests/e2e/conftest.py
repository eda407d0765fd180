"""The e2e modules' shared stack: a real worker on the tiny models (``pipeline``) and the API on
its stream (``api``), one of each per module. A module that needs another pipeline (e.g.
test_dub_pipeline.py) defines its own fixture of the same name, which wins over these."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from polydub.api.app import create_app
from polydub.settings import Settings
from tests.e2e.harness import Pipeline, running_pipeline
from tests.integration.api.helpers import Served


@pytest.fixture(scope="module")
async def pipeline(
    services: object,
    tiny_models: list[str],
    db_pool: asyncpg.Pool,
    stack_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(stack_settings, db_pool, tmp_path_factory.mktemp("work")) as p:
        yield p


@pytest.fixture(scope="module")
async def api(pipeline: Pipeline) -> AsyncIterator[str]:
    """The API on the pipeline's stream: a render it queues reaches the pipeline's worker."""
    settings = pipeline.settings.model_copy(
        update={"reconcile_interval_seconds": 0.0, "api_outbox_poll_seconds": 0.1}
    )
    served = Served(create_app(settings))
    await served.start()
    yield served.url
    await served.stop()
