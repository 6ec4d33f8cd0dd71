"""The points service's tables (created by its Alembic migrations)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("member_id", String(32), primary_key=True),
    Column("available", BigInteger, nullable=False),
    Column("pending", BigInteger, nullable=False),
    Column("lifetime_earned", BigInteger, nullable=False),
    Column("lifetime_redeemed", BigInteger, nullable=False),
    Column("tier", String(32)),
    Column("timezone", String(64), nullable=False),
    Column("cards", JSONB, nullable=False),  # card_no → {multiplier, valid_from, expires_at}
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("erased_at", DateTime(timezone=True)),  # member.erased: no new money from then on
)

points_lots = Table(
    "points_lots",
    metadata,
    Column("lot_id", String(32), primary_key=True),
    Column("member_id", String(32), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | available
    Column("earned_at", DateTime(timezone=True), nullable=False),
    Column("available_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("source_event_id", String(64)),
    Column("order_id", String(64)),
    Column("notified_at", DateTime(timezone=True)),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", String(32), primary_key=True),
    Column("member_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("bucket", String(16), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("rule", String(64)),
    Column("source_event_id", String(64)),
    Column("source_type", String(100)),
    Column("order_id", String(64)),
    Column("redemption_id", String(32)),
    Column("lot_id", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("occurred_at", DateTime(timezone=True)),
    Column("available_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
    Column("capped_points", BigInteger, nullable=False),
    Column("calculation", JSONB),  # an earn entry's {base_points, factors, capped_points}
)

lot_portions = Table(
    "lot_portions",
    metadata,
    Column("entry_id", String(32), nullable=False),
    Column("lot_id", String(32), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

daily_earnings = Table(
    "daily_earnings",
    metadata,
    Column("member_id", String(32), primary_key=True),
    Column("local_date", Date, primary_key=True),
    Column("points", BigInteger, nullable=False),
)

order_points = Table(
    "order_points",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("member_id", String(32), nullable=False),
    Column("paid_minor", BigInteger, nullable=False),
    Column("refunded_minor", BigInteger, nullable=False),
    Column("points", Integer, nullable=False),
    Column("per_minor", Integer, nullable=False),
    Column("multiplier", Numeric(12, 6), nullable=False),
    Column("awarded", BigInteger, nullable=False),
    Column("current", BigInteger, nullable=False),
    Column("lot_id", String(32)),
    Column("cancelled", Boolean, nullable=False),
    Column("steps", JSONB, nullable=False),
)

# A referral bonus and the referred member's order it follows: reversed when that order is
# cancelled or refunded in full.
referral_bonuses = Table(
    "referral_bonuses",
    metadata,
    Column("lot_id", String(32), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("referrer_id", String(32), nullable=False),
    Column("referred_member_id", String(32), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("reversed_at", DateTime(timezone=True)),
)

earning_rules = Table(
    "earning_rules",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("params", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

redemptions = Table(
    "redemptions",
    metadata,
    Column("redemption_id", String(32), primary_key=True),
    Column("member_id", String(32), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("order_id", String(64)),
    Column("status", String(16), nullable=False),  # redeemed | cancelled
    Column("entry_id", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("cancelled_at", DateTime(timezone=True)),
)


# --- stored value: a second asset on the same ledger engine (minor units, lots never expire) ---
def _same_shape(name: str, like: Table) -> Table:
    return Table(name, metadata, *[column._copy() for column in like.columns])


value_accounts = _same_shape("value_accounts", accounts)
value_lots = _same_shape("value_lots", points_lots)
value_entries = _same_shape("value_entries", ledger_entries)
value_portions = _same_shape("value_portions", lot_portions)

top_ups = Table(
    "top_ups",
    metadata,
    Column("top_up_id", String(32), primary_key=True),
    Column("member_id", String(32), nullable=False),
    Column("external_id", String(128), nullable=False, unique=True),
    Column("amount_minor", BigInteger, nullable=False),
    Column("bonus_minor", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

value_spends = Table(
    "value_spends",
    metadata,
    Column("spend_id", String(32), primary_key=True),
    Column("member_id", String(32), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("order_id", String(64)),
    Column("reason", String(500), nullable=False),
    Column("status", String(16), nullable=False),  # spent | refunded
    Column("entry_id", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("refunded_at", DateTime(timezone=True)),
)


@dataclass(frozen=True)
class LedgerTables:
    """The four tables of one asset's ledger."""

    asset: str
    accounts: Table
    lots: Table
    entries: Table
    portions: Table


POINTS_LEDGER = LedgerTables("points", accounts, points_lots, ledger_entries, lot_portions)
VALUE_LEDGER = LedgerTables(
    "stored_value", value_accounts, value_lots, value_entries, value_portions
)
