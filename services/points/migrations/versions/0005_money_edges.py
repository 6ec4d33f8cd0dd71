"""Money at the edges: earn entries say how they were computed, erased members take no new money,
referral bonuses follow their referred orders.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for entries in ("ledger_entries", "value_entries"):
        # {base_points, factors: [{kind, value, label?}], capped_points} of an earn entry
        op.add_column(entries, sa.Column("calculation", JSONB))
    for accounts in ("accounts", "value_accounts"):
        op.add_column(accounts, sa.Column("erased_at", sa.DateTime(timezone=True)))
    op.create_table(
        "referral_bonuses",
        sa.Column("lot_id", sa.String(32), primary_key=True),
        sa.Column("order_id", sa.String(64), nullable=False),  # the referred member's order
        sa.Column("referrer_id", sa.String(32), nullable=False),
        sa.Column("referred_member_id", sa.String(32), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("reversed_at", sa.DateTime(timezone=True)),
    )
    op.create_index("referral_bonuses_order", "referral_bonuses", ["order_id"])


def downgrade() -> None:
    op.drop_table("referral_bonuses")
    for accounts in ("accounts", "value_accounts"):
        op.drop_column(accounts, "erased_at")
    for entries in ("ledger_entries", "value_entries"):
        op.drop_column(entries, "calculation")
