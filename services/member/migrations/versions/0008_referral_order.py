"""Referrals follow the referred order: remember which paid order qualified a referral, so that
cancelling it (after payment) or refunding it in full opens the referral again.

Backfill: `qualify_referral` stamped `referral_qualified_at` with the qualifying order's
`paid_at`, so the member's paid order with exactly that `paid_at` is the one (the lowest order_id
if two share the instant). A referral whose qualifying order was cancelled or refunded before this
migration stays qualified: its bonus was never reversed, so it must not be earned twice.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("members", sa.Column("referral_order_id", sa.String(32)))
    op.execute(
        """
        UPDATE members m SET referral_order_id = (
            SELECT o.order_id FROM orders o
            WHERE o.member_id = m.member_id AND o.paid_at = m.referral_qualified_at
            ORDER BY o.order_id
            LIMIT 1
        )
        WHERE m.referral_qualified_at IS NOT NULL
        """
    )


def downgrade() -> None:
    op.drop_column("members", "referral_order_id")
