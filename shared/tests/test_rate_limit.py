"""Per-key rate limits: a token bucket per API key and process, 429 `rate_limited` with
Retry-After beyond it, nothing changed by a refused request, and never on /healthz or /metrics.
The service is built by the shared create_app path on a real database; the limiter's clock is
a fake that moves only when the test says so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import loyalty_coupon
import pytest
import pytest_asyncio
from fastapi import APIRouter
from loyalty_shared.db import migrations_dir
from loyalty_shared.errors import PROBLEM_MEDIA_TYPE
from loyalty_shared.ratelimit import RateLimiter, retry_after_seconds
from loyalty_shared.service import ServiceDefinition
from loyalty_shared.settings import PlatformSettings, ServiceSettings
from loyalty_shared.testing import (
    AUTH,
    READ_ONLY_AUTH,
    DatabaseFactory,
    RunningService,
    start_service,
)
from pydantic import BaseModel
from sqlalchemy import text

router = APIRouter(prefix="/v1")
WRITES: list[str] = []  # what the write route did


class Thing(BaseModel):
    name: str


@router.get("/things")
async def count_things() -> dict[str, int]:
    return {"count": len(WRITES)}


@router.post("/things", status_code=201)
async def post_thing(body: Thing) -> Thing:
    WRITES.append(body.name)
    return body


class Ticks:
    """A monotonic clock in seconds that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest_asyncio.fixture(scope="module")
async def service(databases: DatabaseFactory) -> AsyncIterator[RunningService]:
    definition = ServiceDefinition(
        name="ratetest",
        title="rate limit test",
        migrations=migrations_dir(loyalty_coupon.__file__),
        routers=[router],
    )
    running = await start_service(
        definition,
        database_url=await databases.fresh("ratelimit"),
        bootstrap="127.0.0.1:9",  # no broker: background=False starts no Kafka work
        background=False,
        rate_limit_per_second=0.5,
        rate_limit_burst=3,
    )
    yield running
    await running.stop()


@pytest.fixture
def ticks(service: RunningService) -> Ticks:
    """A fresh limiter of the configured size for each test, on a fake clock."""
    configured: RateLimiter = service.app.state.rate_limiter
    clock = Ticks()
    service.app.state.rate_limiter = RateLimiter(
        configured.per_second, configured.burst, monotonic=clock
    )
    WRITES.clear()
    return clock


def test_create_app_takes_the_limits_from_the_settings(service: RunningService):
    limiter: RateLimiter = service.app.state.rate_limiter
    assert (limiter.per_second, limiter.burst) == (0.5, 3)


def test_the_defaults_are_generous_and_the_environment_sets_them(monkeypatch):
    monkeypatch.delenv("LOYALTY_RATE_LIMIT_PER_SECOND", raising=False)
    monkeypatch.delenv("LOYALTY_RATE_LIMIT_BURST", raising=False)
    defaults = PlatformSettings()
    # the benchmarks send 500 orders/s and 1000 coupon requests/s with one key
    assert defaults.rate_limit_per_second >= 2000 and defaults.rate_limit_burst >= 4000
    monkeypatch.setenv("LOYALTY_RATE_LIMIT_PER_SECOND", "25")
    monkeypatch.setenv("LOYALTY_RATE_LIMIT_BURST", "50")
    settings = ServiceSettings.for_service("points")
    assert (settings.rate_limit_per_second, settings.rate_limit_burst) == (25, 50)


async def test_past_the_burst_a_key_gets_429_and_another_key_does_not(
    service: RunningService, ticks: Ticks
):
    client = service.client
    for _ in range(3):  # the burst
        assert (await client.get("/v1/things")).status_code == 200

    refused = await client.get("/v1/things")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == PROBLEM_MEDIA_TYPE
    problem = refused.json()
    assert problem["code"] == "rate_limited" and problem["status"] == 429
    assert "limit" in problem["detail"]
    assert refused.headers["retry-after"] == "2"  # one request every 2 s

    # The bucket is the key's own: another key goes on as before.
    for _ in range(3):
        assert (await client.get("/v1/things", headers=READ_ONLY_AUTH)).status_code == 200

    ticks.advance(1)  # half a request back: still too early, and it says how long is left
    again = await client.get("/v1/things")
    assert again.status_code == 429 and again.headers["retry-after"] == "1"
    ticks.advance(1)
    assert (await client.get("/v1/things")).status_code == 200
    assert (await client.get("/v1/things")).status_code == 429

    ticks.advance(60)  # a long pause refills the bucket up to the burst, not beyond
    for _ in range(3):
        assert (await client.get("/v1/things")).status_code == 200
    assert (await client.get("/v1/things")).status_code == 429


async def test_a_refused_write_changes_nothing_and_records_no_idempotency_key(
    service: RunningService, ticks: Ticks
):
    client = service.client
    for _ in range(3):
        assert (await client.get("/v1/things")).status_code == 200
    refused = await client.post(
        "/v1/things", json={"name": "first"}, headers={**AUTH, "Idempotency-Key": "rl-1"}
    )
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert WRITES == []
    async with service.runtime.engine.connect() as conn:
        recorded = await conn.scalar(
            text("SELECT count(*) FROM idempotency_keys WHERE key = 'rl-1'")
        )
    assert recorded == 0

    # Had the key been recorded, another body would be refused as a reuse (422).
    ticks.advance(2)
    accepted = await client.post(
        "/v1/things", json={"name": "second"}, headers={**AUTH, "Idempotency-Key": "rl-1"}
    )
    assert accepted.status_code == 201, accepted.text
    assert WRITES == ["second"]


async def test_health_and_metrics_are_never_limited(service: RunningService, ticks: Ticks):
    client = service.client
    for _ in range(4):
        await client.get("/v1/things")
    assert (await client.get("/v1/things")).status_code == 429
    anonymous = {"Authorization": ""}
    for _ in range(20):
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/healthz", headers=anonymous)).status_code == 200
        assert (await client.get("/metrics", headers=anonymous)).status_code == 200


async def test_a_missing_or_unknown_key_is_still_a_401(service: RunningService, ticks: Ticks):
    for _ in range(4):
        await service.client.get("/v1/things")
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nobody"}):
        response = await service.client.get("/v1/things", headers=headers)
        assert response.status_code == 401 and response.json()["code"] == "unauthorized"


async def test_a_limit_of_zero_is_no_limit(service: RunningService):
    service.app.state.rate_limiter = RateLimiter(0, 0, monotonic=Ticks())
    try:
        for _ in range(50):
            assert (await service.client.get("/v1/things")).status_code == 200
    finally:
        service.app.state.rate_limiter = RateLimiter(0.5, 3)


def test_the_bucket_arithmetic():
    clock = Ticks()
    limiter = RateLimiter(10, 2, monotonic=clock)
    assert [limiter.take("k") for _ in range(2)] == [0, 0]
    assert limiter.take("k") == pytest.approx(0.1)
    clock.advance(0.05)
    assert limiter.take("k") == pytest.approx(0.05)  # half refilled, still short
    clock.advance(0.05)
    assert limiter.take("k") == 0
    assert retry_after_seconds(0.01) == 1 and retry_after_seconds(1.2) == 2
    # a burst below one request still lets one through
    assert RateLimiter(0.5, 0, monotonic=clock).take("k") == 0


def test_openapi_declares_429_with_retry_after_on_v1_operations(service: RunningService):
    document = service.app.openapi()
    for method in ("get", "post"):
        limited = document["paths"]["/v1/things"][method]["responses"]["429"]
        assert "rate_limited" in limited["description"]
        assert limited["content"] == {
            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
        assert limited["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
    assert "429" not in document["paths"]["/healthz"]["get"]["responses"]


async def test_bursts_of_concurrent_requests_spend_exactly_the_burst(
    service: RunningService, ticks: Ticks
):
    answers = await asyncio.gather(*(service.client.get("/v1/things") for _ in range(10)))
    assert sorted(a.status_code for a in answers) == [200] * 3 + [429] * 7


def _from(app, address: str):
    import httpx

    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://toy")


async def test_failed_authentications_are_throttled_per_address_and_a_valid_key_never_is():
    """Contract §3: once an address has sent 20 unknown keys in a minute, its further unknown
    keys answer 429 `rate_limited` with Retry-After; other addresses, and valid keys from the
    same address, are not refused by it; a minute later the address may try again."""
    from loyalty_shared.testing import toy_app

    app = toy_app(router)
    ticks = Ticks()
    app.state.auth_failures = RateLimiter(20 / 60, 20, monotonic=ticks)
    guessing = {"Authorization": "Bearer guess"}
    async with _from(app, "203.0.113.7") as attacker, _from(app, "198.51.100.2") as other:
        for n in range(20):
            response = await attacker.get("/v1/things", headers={"Authorization": f"Bearer g{n}"})
            assert response.status_code == 401, (n, response.text)
        refused = await attacker.get("/v1/things", headers=guessing)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert (await attacker.get("/v1/things")).status_code == 429  # no key at all: the same
        # a valid key from the same address, and an unknown one from another, are answered
        assert (await attacker.get("/v1/things", headers=AUTH)).status_code == 200
        assert (await other.get("/v1/things", headers=guessing)).status_code == 401
        ticks.advance(60)
        assert (await attacker.get("/v1/things", headers=guessing)).status_code == 401


def test_the_failure_throttle_holds_a_bounded_number_of_addresses():
    ticks = Ticks()
    limiter = RateLimiter(20 / 60, 20, monotonic=ticks, max_buckets=1000)
    for n in range(5000):
        limiter.take(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._buckets) <= 1000
