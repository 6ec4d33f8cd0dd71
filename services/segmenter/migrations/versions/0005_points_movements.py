"""Points movements per event at its own instant, instead of per UTC day: an analytics period is
the half-open interval of instants [start, end) (contract §8), which days cannot answer.

The days recorded so far become one movement per day and kind at the day's 00:00 UTC: what
happened before this migration is known to the day only.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "points_movements",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
    )
    op.create_index("points_movements_occurred", "points_movements", ["occurred_at"])
    op.execute(
        "INSERT INTO points_movements (event_id, occurred_at, kind, points) "
        "SELECT 'day:' || to_char(day, 'YYYY-MM-DD') || ':' || kind, "
        "CAST(day AS timestamp) AT TIME ZONE 'UTC', kind, points FROM points_daily"
    )
    op.drop_table("points_daily")


def downgrade() -> None:
    op.create_table(
        "points_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
    )
    op.execute(
        "INSERT INTO points_daily (day, kind, points, events) "
        "SELECT CAST(occurred_at AT TIME ZONE 'UTC' AS date), kind, sum(points), count(*) "
        "FROM points_movements GROUP BY 1, 2"
    )
    op.drop_table("points_movements")
