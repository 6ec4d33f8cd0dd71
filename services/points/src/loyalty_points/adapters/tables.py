"""The points service's tables (created by its Alembic migrations)."""

from __future__ import annotations

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
    Column("cards", JSONB, nullable=False),  # card_no → {multiplier, expires_at}
    Column("updated_at", DateTime(timezone=True), nullable=False),
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
