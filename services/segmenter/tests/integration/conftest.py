"""One segmenter per test module, on its own database, without a broker (events are delivered
with the consumer's own apply_events); the clock is fixed and moved by the tests."""

from __future__ import annotations

import loyalty_segmenter.bootstrap
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.testing import DatabaseFactory, start_service

from .events import T0


@pytest_asyncio.fixture(scope="module")
async def clock() -> FixedClock:
    return FixedClock(T0)


@pytest_asyncio.fixture(scope="module")
async def segmenter(databases: DatabaseFactory, clock: FixedClock):
    service = await start_service(
        loyalty_segmenter.bootstrap.definition(),
        database_url=await databases.fresh("segmenter"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=clock,
    )
    yield service
    await service.stop()
