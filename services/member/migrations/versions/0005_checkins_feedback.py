"""Check-ins and feedback: daily check-ins, survey answers, complaint tickets and their history.

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"  # a sibling of 0004 (cards and tiers); the service upgrades to all heads
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkins",
        sa.Column("member_id", sa.String(32), sa.ForeignKey("members.member_id"), nullable=False),
        sa.Column("local_date", sa.Date, nullable=False),  # in `timezone`
        sa.Column("streak_days", sa.Integer, nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # One check-in per member and local day, however many requests race for it.
        sa.PrimaryKeyConstraint("member_id", "local_date", name="checkins_member_day"),
        sa.CheckConstraint("streak_days >= 1", name="checkins_streak_positive"),
    )
    op.create_table(
        "survey_answers",
        sa.Column("survey_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), nullable=False, unique=True),
        sa.Column("member_id", sa.String(32), sa.ForeignKey("members.member_id"), nullable=False),
        sa.Column("score", sa.SmallInteger),
        sa.Column("recommend", sa.SmallInteger),
        sa.Column("comment", sa.Text),
        sa.Column("order_id", sa.String(32)),
        sa.Column("ticket_id", sa.String(32)),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("score BETWEEN 1 AND 5", name="survey_answers_score_range"),
        sa.CheckConstraint("recommend BETWEEN 0 AND 10", name="survey_answers_recommend_range"),
        sa.CheckConstraint(
            "score IS NOT NULL OR recommend IS NOT NULL", name="survey_answers_answer_something"
        ),
    )
    op.create_index("survey_answers_member", "survey_answers", ["member_id", "seq"])
    # One answer per member about one order, and one about one complaint ticket.
    op.create_index(
        "survey_answers_member_order",
        "survey_answers",
        ["member_id", "order_id"],
        unique=True,
        postgresql_where=sa.text("order_id IS NOT NULL"),
    )
    op.create_index(
        "survey_answers_member_ticket",
        "survey_answers",
        ["member_id", "ticket_id"],
        unique=True,
        postgresql_where=sa.text("ticket_id IS NOT NULL"),
    )
    op.create_table(
        "complaints",
        sa.Column("ticket_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), nullable=False, unique=True),
        sa.Column("member_id", sa.String(32), sa.ForeignKey("members.member_id"), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(32)),
        sa.Column("order_id", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("response_due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("responded_at", sa.DateTime(timezone=True)),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("complaints_member", "complaints", ["member_id", "seq"])
    op.create_index("complaints_status", "complaints", ["status", "response_due_at"])
    op.create_table(
        "complaint_status_changes",
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column(
            "ticket_id", sa.String(32), sa.ForeignKey("complaints.ticket_id"), nullable=False
        ),
        sa.Column("from_status", sa.String(16)),  # NULL: the ticket was opened
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("complaint_status_changes_ticket", "complaint_status_changes", ["ticket_id"])


def downgrade() -> None:
    op.drop_table("complaint_status_changes")
    op.drop_table("complaints")
    op.drop_table("survey_answers")
    op.drop_table("checkins")
