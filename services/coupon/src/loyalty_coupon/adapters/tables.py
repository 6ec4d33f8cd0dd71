"""The coupon service's tables (created by its Alembic migrations)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()

coupon_templates = Table(
    "coupon_templates",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("value", BigInteger, nullable=False),
    Column("min_spend_minor", BigInteger, nullable=False),
    Column("max_discount_minor", BigInteger),
    Column("gift_sku", String(64)),
    Column("categories", ARRAY(Text), nullable=False),
    Column("valid_days", Integer),
    Column("starts_at", DateTime(timezone=True)),
    Column("ends_at", DateTime(timezone=True)),
    Column("per_member_limit", Integer, nullable=False),
    Column("stock", BigInteger),
    Column("issued_count", BigInteger, nullable=False),
    Column("points_cost", BigInteger),
    Column("currency", String(3), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("template_codes", ARRAY(Text), nullable=False),
    Column("trigger_type", String(32), nullable=False),
    Column("trigger", JSONB, nullable=False),
    Column("starts_at", DateTime(timezone=True)),
    Column("ends_at", DateTime(timezone=True)),
    Column("budget", BigInteger),
    Column("issued_count", BigInteger, nullable=False),
    Column("holdout_percent", Numeric(5, 2), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One row per (campaign, member, triggering fact): issued, held out, or refused and why.
# The unique key is what makes a campaign grant at most once per fact.
campaign_grants = Table(
    "campaign_grants",
    metadata,
    Column("campaign_code", String(64), primary_key=True),
    Column("member_id", String(64), primary_key=True),
    Column("trigger_key", String(200), primary_key=True),
    Column("outcome", String(16), nullable=False),  # issued | holdout | not_issued
    Column("coupons_issued", Integer, nullable=False),
    Column("reasons", ARRAY(Text), nullable=False),
    Column("via", String(16), nullable=False),  # campaign | bulk_issue
    Column("event_id", String(64)),
    Column("job_id", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

coupons = Table(
    "coupons",
    metadata,
    Column("coupon_code", String(32), primary_key=True),
    Column("template_code", String(64), nullable=False),
    Column("campaign_code", String(64)),
    Column("member_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # issued | redeemed | expired
    Column("valid_from", DateTime(timezone=True), nullable=False),
    Column("valid_until", DateTime(timezone=True), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("issued_via", String(16), nullable=False),  # campaign | bulk_issue | exchange
    Column("trigger_key", String(200)),
    Column("trigger_event_id", String(64)),
    Column("job_id", String(32)),
    Column("exchange_id", String(64)),
    Column("points_cost", BigInteger),
    Column("order_id", String(64)),
    Column("redemption_id", String(32)),
    Column("redeemed_at", DateTime(timezone=True)),
    Column("notified_at", DateTime(timezone=True)),
    Column("expired_at", DateTime(timezone=True)),
)

coupon_redemptions = Table(
    "coupon_redemptions",
    metadata,
    Column("redemption_id", String(32), primary_key=True),
    Column("coupon_code", String(32), nullable=False),
    Column("member_id", String(64), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("discount_minor", BigInteger),
    Column("status", String(16), nullable=False),  # redeemed | released
    Column("source", String(16), nullable=False),  # api | order_paid
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True)),
    Column("release_reason", String(32)),
)

bulk_jobs = Table(
    "bulk_jobs",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("campaign_code", String(64), nullable=False),
    Column("source", String(16), nullable=False),  # member_ids | segment | birthdays
    Column("segment_code", String(64)),  # birthdays: the day, YYYY-MM-DD (Asia/Shanghai)
    Column("member_ids", ARRAY(Text)),
    Column("status", String(16), nullable=False),  # queued | running | completed | failed
    Column("position", Integer, nullable=False),  # member_ids: how many are done
    Column("cursor", Text),  # segment: the segmenter's cursor of the next page
    Column("pages_done", Integer, nullable=False),
    Column("total", Integer),
    Column("processed", Integer, nullable=False),
    Column("issued", Integer, nullable=False),
    Column("coupons_issued", Integer, nullable=False),
    Column("holdout", Integer, nullable=False),
    Column("not_issued", Integer, nullable=False),
    Column("duplicates", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
)

exchanges = Table(
    "exchanges",
    metadata,
    Column("exchange_id", String(64), primary_key=True),
    Column("member_id", String(64), nullable=False),
    Column("template_code", String(64), nullable=False),
    Column("points", BigInteger, nullable=False),
    # pending | issued | failed | refunding | refund_pending | refunded: domain/exchanges.py
    Column("status", String(16), nullable=False),
    Column("points_redemption_id", String(64)),
    Column("coupon_code", String(32)),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
