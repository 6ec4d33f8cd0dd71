"""The member service's tables (created by its Alembic migrations)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, DateTime, MetaData, String, Table, text
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
    Column("referral_qualified_at", DateTime(timezone=True)),
)

identities = Table(
    "identities",
    metadata,
    Column("member_id", String(32), nullable=False),
    Column("kind", String(32), nullable=False),  # wechat_openid | push_token
    Column("value", String(512), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(32), primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("store_id", String(64)),
    Column("member_id", String(32)),  # NULL: a guest order
    Column("status", String(16), nullable=False),  # placed|paid|shipped|delivered|cancelled
    Column("currency", String(3), nullable=False),
    Column("total_minor", BigInteger, nullable=False),
    Column("paid_minor", BigInteger, nullable=False),
    Column("refunded_minor", BigInteger, nullable=False, server_default="0"),
    Column("lines", JSONB, nullable=False),
    Column("coupon_codes", JSONB, nullable=False),
    Column("member_tier", String(32)),  # the tier held before this order was paid
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("paid_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

refunds = Table(
    "refunds",
    metadata,
    Column("refund_id", String(32), primary_key=True),
    Column("order_id", String(32), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
