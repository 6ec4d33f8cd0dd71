"""`PUT /v1/tiers` announces the ladder as it stands now: `member.tier_ladder_changed`
(contract §5: the points service shows the current ladder, whatever the last tier change was).

The service runs in-process without its Kafka tasks on a database of its own (the tests change
the ladder); the outbox is the record of what it emitted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import loyalty_member.bootstrap
import orjson
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.events.members import TIER_LADDER_KEY
from loyalty_shared.testing import READ_ONLY_AUTH, DatabaseFactory, RunningService, start_service
from sqlalchemy import text

NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
LADDER = {
    "metric": "order_count_365d",
    "tiers": [
        {"code": "member", "name": "Member", "threshold": 0, "points_multiplier": 1.0},
        {
            "code": "regular",
            "name": "Regular",
            "threshold": 3,
            "points_multiplier": 1.25,
            "benefits": {"discount_percent": 5, "free_shipping": True},
        },
        {"code": "vip", "name": "VIP", "threshold": 12, "points_multiplier": 2.0},
    ],
}


@pytest_asyncio.fixture(scope="module")
async def member(databases: DatabaseFactory):
    service = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("tier_ladder_event"),
        bootstrap="127.0.0.1:9",  # background=False: the broker is never contacted
        clock=FixedClock(NOW),
        background=False,
    )
    yield service
    await service.stop()


async def outbox(member: RunningService, type_: str | None = None) -> list[dict[str, Any]]:
    """(topic, key, CloudEvent) of every row in the outbox, optionally of one type, in order."""
    sql = "SELECT topic, key, type, value FROM outbox"
    if type_:
        sql += " WHERE type = :t"
    async with member.runtime.engine.connect() as conn:
        rows = await conn.execute(text(sql + " ORDER BY seq"), {"t": type_})
        return [{"topic": r.topic, "key": r.key, "event": orjson.loads(r.value)} for r in rows]


async def test_setting_the_ladder_emits_it_once_with_the_new_multipliers(member):
    before = len(await outbox(member))
    response = await member.client.put("/v1/tiers", json=LADDER)
    assert response.status_code == 200, response.text

    [row] = await outbox(member, "member.tier_ladder_changed")
    assert (row["topic"], row["key"]) == ("loyalty.members", TIER_LADDER_KEY)
    assert TIER_LADDER_KEY == "tier-ladder"
    event = row["event"]
    assert event["subject"] is None  # no member: the key names the ladder
    assert event["source"] == "loyalty/member"
    assert event["dataschema"] == "urn:loyalty:schema:member.tier_ladder_changed:1"
    assert event["time"] == "2026-12-01T02:00:00Z"
    assert event["data"] == {
        "metric": "order_count_365d",
        "tiers": [
            {"code": "member", "label": "Member", "points_multiplier": 1.0},
            {"code": "regular", "label": "Regular", "points_multiplier": 1.25},
            {"code": "vip", "label": "VIP", "points_multiplier": 2.0},
        ],
        "occurred_at": "2026-12-01T02:00:00Z",
    }
    # the ladder change itself moves nobody and writes nothing else to the outbox
    assert len(await outbox(member)) == before + 1


async def test_each_put_announces_the_ladder_as_it_stands_and_a_refused_one_nothing(member):
    before = await outbox(member, "member.tier_ladder_changed")
    cheaper = {
        "metric": "spend_365d",
        "tiers": [
            {"code": "bronze", "name": "Bronze", "threshold": 0, "points_multiplier": 1.0},
            {"code": "silver", "name": "Silver", "threshold": 100000, "points_multiplier": 1.1},
        ],
    }
    assert (await member.client.put("/v1/tiers", json=cheaper)).status_code == 200
    # the same ladder again announces it again: a consumer that missed it can be re-synced
    assert (await member.client.put("/v1/tiers", json=cheaper)).status_code == 200
    broken = {"metric": "spend_365d", "tiers": [{**cheaper["tiers"][1], "threshold": 5}]}
    assert (await member.client.put("/v1/tiers", json=broken)).status_code == 422
    forbidden = await member.client.put("/v1/tiers", json=LADDER, headers=READ_ONLY_AUTH)
    assert forbidden.status_code == 403

    after = await outbox(member, "member.tier_ladder_changed")
    assert len(after) == len(before) + 2
    for row in after[len(before) :]:
        assert row["key"] == TIER_LADDER_KEY
        assert row["event"]["data"]["metric"] == "spend_365d"
        assert [(t["code"], t["points_multiplier"]) for t in row["event"]["data"]["tiers"]] == [
            ("bronze", 1.0),
            ("silver", 1.1),
        ]
    assert (await member.client.get("/v1/tiers")).json()["tiers"][1]["points_multiplier"] == 1.1
