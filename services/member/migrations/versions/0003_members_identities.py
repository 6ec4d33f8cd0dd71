"""Members: referral qualification and channel identities.

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


def upgrade() -> None:
    op.add_column("members", sa.Column("referral_qualified_at", sa.DateTime(timezone=True)))
    op.create_index("members_card_no", "members", ["card_no"])
    op.create_table(
        "identities",
        sa.Column("member_id", sa.String(32), sa.ForeignKey("members.member_id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("member_id", "kind", "value"),
    )


def downgrade() -> None:
    op.drop_table("identities")
    op.drop_column("members", "referral_qualified_at")
