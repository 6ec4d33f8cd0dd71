"""Orders intake: orders and their refunds.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(32), primary_key=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=False),
        sa.Column("store_id", sa.String(64)),
        sa.Column("member_id", sa.String(32)),  # NULL: a guest order
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total_minor", sa.BigInteger, nullable=False),
        sa.Column("paid_minor", sa.BigInteger, nullable=False),
        sa.Column("refunded_minor", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lines", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("coupon_codes", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("member_tier", sa.String(32)),  # the tier held before this order was paid
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("channel", "external_id", name="orders_channel_external_id"),
    )
    op.create_index("orders_member_paid", "orders", ["member_id", "paid_at"])
    op.create_table(
        "refunds",
        sa.Column("refund_id", sa.String(32), primary_key=True),
        sa.Column("order_id", sa.String(32), sa.ForeignKey("orders.order_id"), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("order_id", "external_id", name="refunds_order_external_id"),
    )


def downgrade() -> None:
    op.drop_table("refunds")
    op.drop_table("orders")
