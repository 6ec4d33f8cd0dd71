"""Templates, campaigns and their grants, coupons, redemptions, bulk jobs, exchanges.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "coupon_templates",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("min_spend_minor", sa.BigInteger, nullable=False),
        sa.Column("max_discount_minor", sa.BigInteger),
        sa.Column("gift_sku", sa.String(64)),
        sa.Column("categories", ARRAY(sa.Text), nullable=False),
        sa.Column("valid_days", sa.Integer),
        sa.Column("starts_at", TS),
        sa.Column("ends_at", TS),
        sa.Column("per_member_limit", sa.Integer, nullable=False),
        sa.Column("stock", sa.BigInteger),
        sa.Column("issued_count", sa.BigInteger, nullable=False),
        sa.Column("points_cost", sa.BigInteger),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("stock IS NULL OR issued_count <= stock", name="stock_not_negative"),
    )
    op.create_table(
        "campaigns",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("template_codes", ARRAY(sa.Text), nullable=False),
        sa.Column("trigger_type", sa.String(32), nullable=False),
        sa.Column("trigger", JSONB, nullable=False),
        sa.Column("starts_at", TS),
        sa.Column("ends_at", TS),
        sa.Column("budget", sa.BigInteger),
        sa.Column("issued_count", sa.BigInteger, nullable=False),
        sa.Column("holdout_percent", sa.Numeric(5, 2), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("budget IS NULL OR issued_count <= budget", name="within_budget"),
    )
    op.create_index("campaigns_by_trigger", "campaigns", ["trigger_type"])
    op.create_table(
        "campaign_grants",
        sa.Column("campaign_code", sa.String(64), nullable=False),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("trigger_key", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("coupons_issued", sa.Integer, nullable=False),
        sa.Column("reasons", ARRAY(sa.Text), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(64)),
        sa.Column("job_id", sa.String(32)),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("campaign_code", "member_id", "trigger_key"),
    )
    op.create_index("campaign_grants_by_outcome", "campaign_grants", ["campaign_code", "outcome"])
    op.create_table(
        "coupons",
        sa.Column("coupon_code", sa.String(32), primary_key=True),
        sa.Column("template_code", sa.String(64), nullable=False),
        sa.Column("campaign_code", sa.String(64)),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("valid_from", TS, nullable=False),
        sa.Column("valid_until", TS, nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("issued_via", sa.String(16), nullable=False),
        sa.Column("trigger_key", sa.String(200)),
        sa.Column("trigger_event_id", sa.String(64)),
        sa.Column("job_id", sa.String(32)),
        sa.Column("exchange_id", sa.String(64)),
        sa.Column("points_cost", sa.BigInteger),
        sa.Column("order_id", sa.String(64)),
        sa.Column("redemption_id", sa.String(32)),
        sa.Column("redeemed_at", TS),
        sa.Column("notified_at", TS),
        sa.Column("expired_at", TS),
    )
    op.create_index("coupons_by_member", "coupons", ["member_id", "issued_at"])
    op.create_index("coupons_by_member_template", "coupons", ["member_id", "template_code"])
    op.create_index(
        "coupons_due_expiry",
        "coupons",
        ["valid_until"],
        postgresql_where=sa.text("status = 'issued'"),
    )
    op.create_index(
        "coupons_due_notice",
        "coupons",
        ["valid_until"],
        postgresql_where=sa.text("status = 'issued' AND notified_at IS NULL"),
    )
    op.create_index(
        "coupons_by_order",
        "coupons",
        ["order_id"],
        postgresql_where=sa.text("order_id IS NOT NULL"),
    )
    op.create_index("coupons_by_campaign", "coupons", ["campaign_code", "status"])
    op.create_table(
        "coupon_redemptions",
        sa.Column("redemption_id", sa.String(32), primary_key=True),
        sa.Column("coupon_code", sa.String(32), nullable=False),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("discount_minor", sa.BigInteger),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("released_at", TS),
        sa.Column("release_reason", sa.String(32)),
    )
    op.create_index("coupon_redemptions_by_coupon", "coupon_redemptions", ["coupon_code"])
    op.create_table(
        "bulk_jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("campaign_code", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("segment_code", sa.String(64)),
        sa.Column("member_ids", ARRAY(sa.Text)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("cursor", sa.Text),
        sa.Column("pages_done", sa.Integer, nullable=False),
        sa.Column("total", sa.Integer),
        sa.Column("processed", sa.Integer, nullable=False),
        sa.Column("issued", sa.Integer, nullable=False),
        sa.Column("coupons_issued", sa.Integer, nullable=False),
        sa.Column("holdout", sa.Integer, nullable=False),
        sa.Column("not_issued", sa.Integer, nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS),
    )
    op.create_index(
        "bulk_jobs_unfinished",
        "bulk_jobs",
        ["created_at"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_table(
        "exchanges",
        sa.Column("exchange_id", sa.String(64), primary_key=True),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("template_code", sa.String(64), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("points_redemption_id", sa.String(64)),
        sa.Column("coupon_code", sa.String(32)),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index(
        "exchanges_refund_pending",
        "exchanges",
        ["updated_at"],
        postgresql_where=sa.text("status = 'refund_pending'"),
    )


def downgrade() -> None:
    for table in (
        "exchanges",
        "bulk_jobs",
        "coupon_redemptions",
        "coupons",
        "campaign_grants",
        "campaigns",
        "coupon_templates",
    ):
        op.drop_table(table)
