"""Every analytics period is the half-open interval of instants [start, end) (contract §8): an
event at `start` counts, one at `end` does not, and the last day counts up to `end`, whatever
the hour. Each endpoint is asked about events just before start, at start, just before end
and at end, with amounts of distinct powers of two so that a wrong edge shows in the sum."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import loyalty_segmenter
import pytest_asyncio
from alembic import command
from alembic.config import Config
from loyalty_shared.db import create_engine, migrations_dir
from sqlalchemy import text

from .events import credited, debited, deliver, paid, registered

START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
END = datetime(2026, 12, 7, 17, 0, tzinfo=UTC)
TICK = timedelta(milliseconds=1)
PERIOD = {"start": START.isoformat(), "end": END.isoformat()}
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
JAN_1 = datetime(2027, 1, 1, tzinfo=UTC)


@pytest_asyncio.fixture(scope="module")
async def edges(segmenter, clock):
    """Orders (W = 30 days for "customer" in retention):

    O: START - tick (1)                  -> a customer at start, no order in the period
    P: START - tick (2), START (4)       -> a customer at start; one order in the period
    Q: END - tick (8), END (16)          -> first order in the period: new; one order in it
    R: START (32), END - tick (64)       -> first order at START: new, two orders: a repeater
    Z: END (128)                         -> nothing in the period
    guests: START - tick (256), START (512), END - tick (1024), END (2048)
    K, L, M, N (leaky bucket, 360 days): Dec 1 - tick, Dec 1, Jan 1 - tick, Jan 1 (4096 each)
    Points of X on 2026-12-07: credited 10000 just before midnight, 20 at midnight, 50 just
    before 17:00, 7 at 17:00; debited 1, 400, 1700 and 3 at the same instants.
    """
    clock.set(datetime(2027, 1, 10, tzinfo=UTC))
    members = "OPQRZKLMNX"
    await deliver(segmenter, *(registered(m, datetime(2026, 10, 1, tzinfo=UTC)) for m in members))
    orders = [
        ("O", START - TICK, 1),
        ("P", START - TICK, 2),
        ("P", START, 4),
        ("Q", END - TICK, 8),
        ("Q", END, 16),
        ("R", START, 32),
        ("R", END - TICK, 64),
        ("Z", END, 128),
        (None, START - TICK, 256),
        (None, START, 512),
        (None, END - TICK, 1024),
        (None, END, 2048),
        ("K", DEC_1 - TICK, 4096),
        ("L", DEC_1, 4096),
        ("M", JAN_1 - TICK, 4096),
        ("N", JAN_1, 4096),
    ]
    await deliver(
        segmenter,
        *(paid(m, f"edge-{n}", amount, at) for n, (m, at, amount) in enumerate(orders)),
    )
    day = datetime(2026, 12, 7, tzinfo=UTC)
    five = day.replace(hour=17)
    await deliver(
        segmenter,
        credited("X", 10000, 10000, at=day - TICK),
        debited("X", 1, 9999, at=day - TICK),
        credited("X", 20, 10019, at=day),
        debited("X", 400, 9619, at=day),
        credited("X", 50, 9669, at=five - TICK),
        debited("X", 1700, 7969, at=five - TICK),
        credited("X", 7, 7976, at=five),
        debited("X", 3, 7973, at=five),
    )


async def get(segmenter, path: str, **params) -> dict:
    response = await segmenter.client.get(f"/v1/analytics/{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_repeat_purchase_counts_start_and_not_end(segmenter, edges):
    body = await get(segmenter, "repeat-purchase", **PERIOD)
    # buyers P (4), Q (8), R (32, 64); R alone bought twice; O and Z bought outside
    assert (body["buyers"], body["repeat_buyers"]) == (3, 1)
    assert body["period"] == {"start": "2026-12-01T08:00:00Z", "end": "2026-12-07T17:00:00Z"}


async def test_members_versus_guests_counts_start_and_not_end(segmenter, edges):
    body = await get(segmenter, "members-vs-guests", **PERIOD)
    assert (body["members"]["orders"], body["members"]["revenue_minor"]) == (4, 4 + 8 + 32 + 64)
    assert body["members"]["buyers"] == 3
    assert (body["guests"]["orders"], body["guests"]["revenue_minor"]) == (2, 512 + 1024)


async def test_retention_counts_start_and_not_end(segmenter, edges):
    body = await get(segmenter, "retention", active_days=30, **PERIOD)
    # customers at START: bought in [START - 30 days, START): O, P, K, L (not R, who bought
    # at START); at END, in [END - 30 days, END): those and Q, R (not Z, who bought at END)
    assert (body["S"], body["E"], body["N"]) == (4, 6, 2)
    figures = body["figures"]
    assert (figures["new"], figures["reactivated"], figures["lost"]) == (2, 0, 0)
    assert body["retention_rate"] == 100.0


async def test_leaky_bucket_months_are_half_open(segmenter, edges):
    body = await get(
        segmenter,
        "leaky-bucket",
        start_month="2026-12",
        end_month="2027-01",
        timezone="UTC",
        active_days=360,
    )
    dec, jan = body["items"]
    # at Dec 1 00:00: K (Nov 30, 23:59:59.999) alone; L's order at Dec 1 00:00 is December's
    assert dec["customers_at_start"] == 1
    # at Jan 1 00:00: K, L, M and the period's O, P, Q, R, Z; N's order at Jan 1 is January's
    assert (dec["customers_at_end"], dec["gained"], dec["new"], dec["lost"]) == (8, 7, 7, 0)
    assert (jan["customers_at_start"], jan["gained"], jan["new"]) == (8, 1, 1)
    assert body["period"] == {"start": "2026-12-01T00:00:00Z", "end": "2027-02-01T00:00:00Z"}


async def test_points_liability_movements_count_up_to_end_on_the_last_day(segmenter, edges):
    # the issue: 00:00Z to 17:00Z of 2026-12-07 answered 0 although 1700 points were debited
    body = await get(
        segmenter, "points-liability", start="2026-12-07T00:00:00Z", end="2026-12-07T17:00:00Z"
    )
    assert body["movements"]["debited"] == 400 + 1700
    assert body["movements"]["credited"] == 20 + 50
    # a period inside one day, and one across midnight
    inside = await get(
        segmenter, "points-liability", start="2026-12-07T10:00:00Z", end="2026-12-07T17:00:00Z"
    )
    assert (inside["movements"]["debited"], inside["movements"]["credited"]) == (1700, 50)
    across = await get(
        segmenter,
        "points-liability",
        start="2026-12-06T23:00:00Z",
        end="2026-12-07T00:00:00.001Z",
    )
    assert (across["movements"]["debited"], across["movements"]["credited"]) == (401, 10020)
    # an offset other than Z names the same instants
    shanghai = await get(
        segmenter,
        "points-liability",
        start="2026-12-07T08:00:00+08:00",
        end="2026-12-08T01:00:00+08:00",
    )
    assert shanghai["movements"] == body["movements"]


async def test_the_days_recorded_before_become_movements_at_their_midnight(databases):
    """Migration 0005: points_daily's (day, kind) sums become movements at 00:00 UTC."""
    engine = create_engine(await databases.fresh("seg_migration"))
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir(loyalty_segmenter.__file__)))

    def upgrade(to: str):
        def run(sync_conn):
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, to)

        return run

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade("0004"))
            await conn.execute(
                text(
                    "INSERT INTO points_daily (day, kind, points, events) VALUES "
                    "('2026-12-06', 'debited', 5, 2), ('2026-12-07', 'debited', 1700, 1), "
                    "('2026-12-07', 'credited', 90, 3)"
                )
            )
        async with engine.begin() as conn:
            await conn.run_sync(upgrade("heads"))
            rows = await conn.execute(
                text("SELECT occurred_at, kind, points FROM points_movements ORDER BY 1, 2")
            )
            assert [tuple(r) for r in rows] == [
                (datetime(2026, 12, 6, tzinfo=UTC), "debited", 5),
                (datetime(2026, 12, 7, tzinfo=UTC), "credited", 90),
                (datetime(2026, 12, 7, tzinfo=UTC), "debited", 1700),
            ]
            gone = await conn.scalar(text("SELECT to_regclass('points_daily')"))
            assert gone is None
    finally:
        await engine.dispose()
