"""The points service's tables (created by its Alembic migrations)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table

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
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

points_lots = Table(
    "points_lots",
    metadata,
    Column("lot_id", String(32), primary_key=True),
    Column("member_id", String(32), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("earned_at", DateTime(timezone=True), nullable=False),
    Column("available_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("source_event_id", String(64), nullable=False),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", String(32), primary_key=True),
    Column("member_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("rule", String(64)),
    Column("source_event_id", String(64)),
    Column("source_type", String(100)),
    Column("order_id", String(64)),
    Column("lot_id", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("available_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
)
