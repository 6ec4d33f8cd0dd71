"""The segmenter's tables (created by its Alembic migrations)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

profiles = Table(
    "profiles",
    metadata,
    Column("member_id", String(64), primary_key=True),
    Column("registered_at", DateTime(timezone=True)),
    Column("erased_at", DateTime(timezone=True)),
    Column("tier", String(32)),
    Column("points_available", BigInteger, nullable=False),
    Column("points_pending", BigInteger, nullable=False),
    Column("orders_count", Integer, nullable=False),
    Column("first_order_at", DateTime(timezone=True)),
    Column("last_order_at", DateTime(timezone=True)),
    Column("spend_minor", BigInteger, nullable=False),
    Column("orders_365d", Integer, nullable=False),
    Column("spend_365d_minor", BigInteger, nullable=False),
    Column("recent_spend_minor", BigInteger, nullable=False),
    Column("earlier_spend_minor", BigInteger, nullable=False),
    Column("window_due_at", DateTime(timezone=True)),
    Column("category_spend", JSONB, nullable=False),
    Column("preference_tags", JSONB, nullable=False),  # a list of categories
    Column("buyer_weight", String(16), nullable=False),
    Column("lifecycle_stage", String(16)),
    Column("stage_changed_at", DateTime(timezone=True)),
    Column("churn_risk", Float),
    Column("churn_reasons", JSONB, nullable=False),
    Column("churn_inputs", JSONB, nullable=False),
    Column("rfm_r", SmallInteger),
    Column("rfm_f", SmallInteger),
    Column("rfm_m", SmallInteger),
    Column("rfm_scored_at", DateTime(timezone=True)),
    Column("evaluated_at", DateTime(timezone=True)),
    Column("next_transition_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Every order the segmenter heard of, members' and guests' (member_id NULL): the facts that
# profiles are recomputed from and that the analytics count.
profile_orders = Table(
    "profile_orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("member_id", String(64)),
    Column("channel", String(16), nullable=False),
    Column("store_id", String(64)),
    Column("currency", String(8), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("paid_minor", BigInteger, nullable=False),
    Column("refunded_minor", BigInteger, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Column("counted", Boolean, nullable=False),
    Column("net_minor", BigInteger, nullable=False),
    Column("categories", JSONB, nullable=False),
    Column("coupon_codes", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Points movements, one per points.* event at the event's own instant (points liability
# analytics count those in [start, end)); movements from before migration 0005 are one per UTC
# day and kind, at the day's 00:00.
points_movements = Table(
    "points_movements",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("points", BigInteger, nullable=False),
)

coupon_facts = Table(
    "coupon_facts",
    metadata,
    Column("coupon_code", String(64), primary_key=True),
    Column("campaign_code", String(64)),
    Column("template_code", String(64), nullable=False),
    Column("member_id", String(64), nullable=False),
    Column("issued_via", String(16)),
    Column("issued_at", DateTime(timezone=True)),
    Column("redeemed_at", DateTime(timezone=True)),
    Column("order_id", String(64)),
    Column("discount_minor", BigInteger),
    Column("released_at", DateTime(timezone=True)),
    Column("expired_at", DateTime(timezone=True)),
)

# The members a campaign held out (its control group), one row per coupon-service holdout
# record (campaign, member, grant key), from `coupon.holdout_assigned`.
campaign_holdouts = Table(
    "campaign_holdouts",
    metadata,
    Column("campaign_code", String(64), primary_key=True),
    Column("member_id", String(64), primary_key=True),
    Column("grant_key", String(200), primary_key=True),
    Column("trigger", String(32), nullable=False),
    Column("assigned_via", String(16), nullable=False),
    Column("assigned_at", DateTime(timezone=True), nullable=False),
    Column("event_id", String(64), nullable=False),
)

segments = Table(
    "segments",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text),
    Column("rule", JSONB, nullable=False),
    Column("time_relative", Boolean, nullable=False),
    Column("uses_rfm", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

segment_members = Table(
    "segment_members",
    metadata,
    Column("segment_code", String(64), primary_key=True),
    Column("member_id", String(64), primary_key=True),
    Column("entered_at", DateTime(timezone=True), nullable=False),
)
