"""Campaign holdout members, from `coupon.holdout_assigned` (campaign results against them).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_holdouts",
        sa.Column("campaign_code", sa.String(64), primary_key=True),
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("grant_key", sa.String(200), primary_key=True),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("assigned_via", sa.String(16), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("campaign_holdouts")
