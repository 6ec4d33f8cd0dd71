"""The member service's tables (created by its Alembic migrations)."""

from __future__ import annotations

from sqlalchemy import Column, Date, DateTime, MetaData, String, Table, text
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

members = Table(
    "members",
    metadata,
    Column("member_id", String(32), primary_key=True),
    Column("phone", String(20), unique=True),  # NULL once erased
    Column("email", String(320)),
    Column("name", String(200)),
    Column("birthday", Date),
    Column("locale", String(10), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("card_no", String(32), nullable=False, unique=True),
    Column("referral_code", String(16), nullable=False, unique=True),
    Column("referred_by", String(32)),
    Column("tier", String(32), nullable=False),
    Column("store_id", String(64)),
    Column("channel", String(32)),
    Column("consents", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("erased_at", DateTime(timezone=True)),
)
