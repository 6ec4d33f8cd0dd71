"""Migration 0008 (`members.referral_order_id`) finds the order that qualified each referral
already qualified before it, so that order's cancel or full refund can reopen the referral."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import loyalty_member
from alembic import command
from alembic.config import Config
from loyalty_shared.db import create_engine, migrations_dir
from loyalty_shared.testing import DatabaseFactory
from sqlalchemy import text
from sqlalchemy.engine import Connection

QUALIFIED_AT = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)


def _migrate_to(revision: str):
    def upgrade(sync_conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir(loyalty_member.__file__)))
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    return upgrade


def _member(member_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "member_id": member_id,
        "card_no": f"card-{member_id}",
        "referral_code": f"RC{member_id}",
        "referred_by": None,
        "referral_qualified_at": None,
        **fields,
    }


def _order(order_id: str, member_id: str, paid_at: datetime | None) -> dict[str, Any]:
    return {"order_id": order_id, "member_id": member_id, "paid_at": paid_at}


async def test_0008_backfills_the_qualifying_order_of_each_qualified_referral(
    databases: DatabaseFactory,
):
    engine = create_engine(await databases.fresh("referral_migration"))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate_to("0007"))
            for row in [
                _member("referrer"),
                # qualified by o-first (paid at QUALIFIED_AT); o-later was paid after it
                _member("qualified", referred_by="referrer", referral_qualified_at=QUALIFIED_AT),
                # qualified by hand (no order paid at that instant): nothing to remember
                _member("by-hand", referred_by="referrer", referral_qualified_at=QUALIFIED_AT),
                # referred, not qualified yet
                _member("open", referred_by="referrer"),
            ]:
                await conn.execute(
                    text(
                        "INSERT INTO members (member_id, locale, timezone, card_no, referral_code,"
                        " referred_by, tier, created_at, updated_at, referral_qualified_at)"
                        " VALUES (:member_id, 'zh-CN', 'Asia/Shanghai', :card_no,"
                        " :referral_code, :referred_by, 'bronze', :at, :at,"
                        " :referral_qualified_at)"
                    ),
                    {**row, "at": QUALIFIED_AT - timedelta(days=30)},
                )
            for row in [
                _order("o-placed", "qualified", None),
                _order("o-first", "qualified", QUALIFIED_AT),
                _order("o-later", "qualified", QUALIFIED_AT + timedelta(days=1)),
                _order("o-hand", "by-hand", QUALIFIED_AT - timedelta(days=1)),
                _order("o-open", "open", None),
            ]:
                await conn.execute(
                    text(
                        "INSERT INTO orders (order_id, channel, external_id, member_id, status,"
                        " currency, total_minor, paid_minor, refunded_minor, lines, coupon_codes,"
                        " occurred_at, paid_at, created_at, updated_at) VALUES (:order_id,"
                        " 'pos', :order_id, :member_id, 'paid', 'CNY', 100, 100, 0,"
                        " CAST('[]' AS jsonb), CAST('[]' AS jsonb), :at, :paid_at, :at, :at)"
                    ),
                    {**row, "at": QUALIFIED_AT - timedelta(days=2)},
                )
            await conn.run_sync(_migrate_to("heads"))
            rows = await conn.execute(
                text(
                    "SELECT member_id, referral_order_id, referral_qualified_at FROM members"
                    " ORDER BY member_id"
                )
            )
            found = {r.member_id: (r.referral_order_id, r.referral_qualified_at) for r in rows}
    finally:
        await engine.dispose()
    assert found == {
        "by-hand": (None, QUALIFIED_AT),
        "open": (None, None),
        "qualified": ("o-first", QUALIFIED_AT),
        "referrer": (None, None),
    }
