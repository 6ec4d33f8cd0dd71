"""Birthdays: an index on the month and day of `birthday`, for `GET /v1/members:birthdays`.
Also merges the two heads (0004 cards and tiers, 0005 check-ins and feedback).

Revision ID: 0006
Revises: 0004, 0005
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = ("0004", "0005")
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The same expressions and conditions as service_layer/birthdays.py queries with; member_id
    # last, so one day's members come out in page order. Erasure empties `birthday`, and the
    # partial condition keeps erased and birthday-less members out of the index altogether.
    op.create_index(
        "members_birthday_month_day",
        "members",
        [
            sa.text("(EXTRACT(MONTH FROM birthday))"),
            sa.text("(EXTRACT(DAY FROM birthday))"),
            "member_id",
        ],
        postgresql_where=sa.text("birthday IS NOT NULL AND erased_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("members_birthday_month_day", table_name="members")
