"""Fixtures of the notifier's integration tests: the service on a real PostgreSQL (no broker),
a stand-in member API and scripted providers."""

from __future__ import annotations

import httpx
import pytest
import pytest_asyncio
from loyalty_notifier.bootstrap import build
from loyalty_notifier.testing import T0, FakeMembers, Harness, notifier_settings, scripted_providers
from loyalty_shared.clock import FixedClock
from loyalty_shared.testing import DatabaseFactory, start_service


@pytest.fixture(scope="module")
def fake_members() -> FakeMembers:
    return FakeMembers()


@pytest_asyncio.fixture(scope="module")
async def notifier(databases: DatabaseFactory, fake_members: FakeMembers):
    definition, wiring = build(
        notifier_settings(),
        providers=scripted_providers(),
        member_transport=httpx.MockTransport(fake_members.handler),
    )
    service = await start_service(
        definition,
        database_url=await databases.fresh("notifier"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=FixedClock(T0),
    )
    yield Harness(service, wiring, fake_members)
    await service.stop()
