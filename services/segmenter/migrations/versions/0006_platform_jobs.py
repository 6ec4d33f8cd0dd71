"""Platform tables, third shape: job_runs, the schedule's claimed periods and each job's last run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from alembic import op
from loyalty_shared.db import upgrade_platform_tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_platform_tables(op.get_bind())


def downgrade() -> None:
    pass
