"""Platform tables (outbox, processed events, idempotency keys).

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op
from loyalty_shared.db import create_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables(op.get_bind())


def downgrade() -> None:
    pass
