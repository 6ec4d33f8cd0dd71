"""Platform tables, second shape: dead letters, the Idempotency-Key lease, the inbox's purge index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from alembic import op
from loyalty_shared.db import upgrade_platform_tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_platform_tables(op.get_bind())


def downgrade() -> None:
    pass
