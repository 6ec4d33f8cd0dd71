"""Stored value: a second asset on the ledger engine (same table shapes), top-ups and spends.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SHAPES = {
    "value_accounts": "accounts",
    "value_lots": "points_lots",
    "value_entries": "ledger_entries",
    "value_portions": "lot_portions",
}


def upgrade() -> None:
    for table, like in _SHAPES.items():
        op.execute(
            f"CREATE TABLE {table} (LIKE {like} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            "INCLUDING INDEXES)"
        )
    op.create_table(
        "top_ups",
        sa.Column("top_up_id", sa.String(32), primary_key=True),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=False, unique=True),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("bonus_minor", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "value_spends",
        sa.Column("spend_id", sa.String(32), primary_key=True),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("order_id", sa.String(64)),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("entry_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refunded_at", sa.DateTime(timezone=True)),
    )
    op.create_index("value_spends_member", "value_spends", ["member_id", "created_at"])


def downgrade() -> None:
    for table in ("value_spends", "top_ups", *_SHAPES):
        op.drop_table(table)
