"""Profiles, order facts, points and coupon facts, segments and their members.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    zero = sa.text("0")
    op.create_table(
        "profiles",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("registered_at", _TS),
        sa.Column("erased_at", _TS),
        sa.Column("tier", sa.String(32)),
        sa.Column("points_available", sa.BigInteger, nullable=False, server_default=zero),
        sa.Column("points_pending", sa.BigInteger, nullable=False, server_default=zero),
        sa.Column("orders_count", sa.Integer, nullable=False, server_default=zero),
        sa.Column("first_order_at", _TS),
        sa.Column("last_order_at", _TS),
        sa.Column("spend_minor", sa.BigInteger, nullable=False, server_default=zero),
        sa.Column("orders_365d", sa.Integer, nullable=False, server_default=zero),
        sa.Column("spend_365d_minor", sa.BigInteger, nullable=False, server_default=zero),
        sa.Column("recent_spend_minor", sa.BigInteger, nullable=False, server_default=zero),
        sa.Column("earlier_spend_minor", sa.BigInteger, nullable=False, server_default=zero),
        sa.Column("window_due_at", _TS),
        sa.Column("category_spend", JSONB, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("preference_tags", JSONB, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("buyer_weight", sa.String(16), nullable=False, server_default="none"),
        sa.Column("lifecycle_stage", sa.String(16)),
        sa.Column("stage_changed_at", _TS),
        sa.Column("churn_risk", sa.Float),
        sa.Column("churn_reasons", JSONB, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("churn_inputs", JSONB, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("rfm_r", sa.SmallInteger),
        sa.Column("rfm_f", sa.SmallInteger),
        sa.Column("rfm_m", sa.SmallInteger),
        sa.Column("rfm_scored_at", _TS),
        sa.Column("evaluated_at", _TS),
        sa.Column("next_transition_at", _TS),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.text("now()")),
    )
    # The recompute job reads only what is due, through this index.
    op.create_index(
        "profiles_next_transition",
        "profiles",
        ["next_transition_at"],
        postgresql_where=sa.text("next_transition_at IS NOT NULL"),
    )
    op.create_index(
        "profiles_buyers",
        "profiles",
        ["last_order_at"],
        postgresql_where=sa.text("orders_count > 0"),
    )

    op.create_table(
        "profile_orders",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("member_id", sa.String(64)),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("store_id", sa.String(64)),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("paid_minor", sa.BigInteger, nullable=False),
        sa.Column("refunded_minor", sa.BigInteger, nullable=False),
        sa.Column("cancelled", sa.Boolean, nullable=False),
        sa.Column("counted", sa.Boolean, nullable=False),
        sa.Column("net_minor", sa.BigInteger, nullable=False),
        sa.Column("categories", JSONB, nullable=False),
        sa.Column("coupon_codes", JSONB, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_index(
        "profile_orders_member",
        "profile_orders",
        ["member_id", "occurred_at"],
        postgresql_where=sa.text("member_id IS NOT NULL"),
    )
    op.create_index("profile_orders_occurred", "profile_orders", ["occurred_at"])

    op.create_table(
        "points_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
    )

    op.create_table(
        "coupon_facts",
        sa.Column("coupon_code", sa.String(64), primary_key=True),
        sa.Column("campaign_code", sa.String(64)),
        sa.Column("template_code", sa.String(64), nullable=False),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("issued_via", sa.String(16)),
        sa.Column("issued_at", _TS),
        sa.Column("redeemed_at", _TS),
        sa.Column("order_id", sa.String(64)),
        sa.Column("discount_minor", sa.BigInteger),
        sa.Column("released_at", _TS),
        sa.Column("expired_at", _TS),
    )
    op.create_index("coupon_facts_campaign", "coupon_facts", ["campaign_code"])

    op.create_table(
        "segments",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("rule", JSONB, nullable=False),
        sa.Column("time_relative", sa.Boolean, nullable=False),
        sa.Column("uses_rfm", sa.Boolean, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "segment_members",
        sa.Column("segment_code", sa.String(64), primary_key=True),
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("entered_at", _TS, nullable=False),
    )
    op.create_index("segment_members_member", "segment_members", ["member_id"])


def downgrade() -> None:
    for table in (
        "segment_members",
        "segments",
        "coupon_facts",
        "points_daily",
        "profile_orders",
        "profiles",
    ):
        op.drop_table(table)
