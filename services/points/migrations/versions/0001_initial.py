"""Platform tables, accounts, lots and the ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from loyalty_shared.db import create_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables(op.get_bind())
    op.create_table(
        "accounts",
        sa.Column("member_id", sa.String(32), primary_key=True),
        sa.Column("available", sa.BigInteger, nullable=False),
        sa.Column("pending", sa.BigInteger, nullable=False),
        sa.Column("lifetime_earned", sa.BigInteger, nullable=False),
        sa.Column("lifetime_redeemed", sa.BigInteger, nullable=False),
        sa.Column("tier", sa.String(32)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "points_lots",
        sa.Column("lot_id", sa.String(32), primary_key=True),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("remaining", sa.BigInteger, nullable=False),
        sa.Column("earned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("source_event_id", sa.String(64), nullable=False),
    )
    op.create_index("points_lots_member", "points_lots", ["member_id", "expires_at"])
    op.create_index(
        "points_lots_due_expiry",
        "points_lots",
        ["expires_at"],
        postgresql_where=sa.text("remaining > 0"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("entry_id", sa.String(32), primary_key=True),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("rule", sa.String(64)),
        sa.Column("source_event_id", sa.String(64)),
        sa.Column("source_type", sa.String(100)),
        sa.Column("order_id", sa.String(64)),
        sa.Column("lot_id", sa.String(32)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ledger_entries_member", "ledger_entries", ["member_id", "entry_id"])


def downgrade() -> None:
    op.drop_table("ledger_entries")
    op.drop_table("points_lots")
    op.drop_table("accounts")
