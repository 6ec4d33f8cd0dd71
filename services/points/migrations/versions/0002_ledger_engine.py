"""The ledger engine: lot states, per-lot portions, order terms, daily tallies, rules, redemptions.

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
    op.add_column(
        "accounts",
        sa.Column("timezone", sa.String(64), nullable=False, server_default="Asia/Shanghai"),
    )
    op.add_column(
        "accounts", sa.Column("cards", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))
    )

    op.add_column(
        "points_lots", sa.Column("state", sa.String(16), nullable=False, server_default="available")
    )
    op.alter_column("points_lots", "source_event_id", nullable=True)  # adjustments have none
    op.add_column("points_lots", sa.Column("order_id", sa.String(64)))
    op.add_column("points_lots", sa.Column("notified_at", sa.DateTime(timezone=True)))
    op.drop_index("points_lots_due_expiry", table_name="points_lots")
    op.create_index(
        "points_lots_due_release",
        "points_lots",
        ["available_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "points_lots_due_expiry",
        "points_lots",
        ["expires_at"],
        postgresql_where=sa.text("state = 'available' AND remaining > 0"),
    )
    op.create_index(
        "points_lots_open", "points_lots", ["member_id"], postgresql_where=sa.text("remaining > 0")
    )

    op.add_column(
        "ledger_entries",
        sa.Column("bucket", sa.String(16), nullable=False, server_default="available"),
    )
    op.add_column("ledger_entries", sa.Column("occurred_at", sa.DateTime(timezone=True)))
    op.add_column(
        "ledger_entries",
        sa.Column("capped_points", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.add_column("ledger_entries", sa.Column("redemption_id", sa.String(32)))

    op.create_table(
        "lot_portions",
        sa.Column("entry_id", sa.String(32), nullable=False),
        sa.Column("lot_id", sa.String(32), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("lot_portions_entry", "lot_portions", ["entry_id"])

    op.create_table(
        "daily_earnings",
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("local_date", sa.Date, nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("member_id", "local_date"),
    )
    op.create_table(
        "order_points",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("paid_minor", sa.BigInteger, nullable=False),
        sa.Column("refunded_minor", sa.BigInteger, nullable=False),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("per_minor", sa.Integer, nullable=False),
        sa.Column("multiplier", sa.Numeric(12, 6), nullable=False),
        sa.Column("awarded", sa.BigInteger, nullable=False),
        sa.Column("current", sa.BigInteger, nullable=False),
        sa.Column("lot_id", sa.String(32)),
        sa.Column("cancelled", sa.Boolean, nullable=False),
        sa.Column("steps", JSONB, nullable=False),
    )
    op.create_table(
        "earning_rules",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("params", JSONB, nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )
    op.create_table(
        "redemptions",
        sa.Column("redemption_id", sa.String(32), primary_key=True),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("order_id", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("entry_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True)),
    )
    op.create_index("redemptions_member", "redemptions", ["member_id", "created_at"])


def downgrade() -> None:
    for table in ("redemptions", "earning_rules", "order_points", "daily_earnings", "lot_portions"):
        op.drop_table(table)
