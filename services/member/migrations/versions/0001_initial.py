"""Platform tables and members.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from loyalty_shared.db import create_platform_tables
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables(op.get_bind())
    op.create_table(
        "members",
        sa.Column("member_id", sa.String(32), primary_key=True),
        sa.Column("phone", sa.String(20), unique=True),
        sa.Column("email", sa.String(320)),
        sa.Column("name", sa.String(200)),
        sa.Column("birthday", sa.Date),
        sa.Column("locale", sa.String(10), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("card_no", sa.String(32), nullable=False, unique=True),
        sa.Column("referral_code", sa.String(16), nullable=False, unique=True),
        sa.Column("referred_by", sa.String(32)),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("store_id", sa.String(64)),
        sa.Column("channel", sa.String(32)),
        sa.Column("consents", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True)),
    )
    op.create_index("members_email", "members", ["email"])


def downgrade() -> None:
    op.drop_table("members")
