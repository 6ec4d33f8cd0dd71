"""Preferences and consent, templates, deliveries, the inbox, frequency counts, payment reminders.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cap_counts",
        sa.Column("member_id", sa.String(length=64), primary_key=True),
        sa.Column("event_id", sa.String(length=64), primary_key=True),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("delivery_id", sa.String(length=32), primary_key=True),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=100)),
        sa.Column("provider_index", sa.Integer(), nullable=False),
        sa.Column("provider_attempts", sa.Integer(), nullable=False),
        sa.Column("locale", sa.String(length=16)),
        sa.Column("context", JSONB(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True)),
        sa.Column("claimed_until", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "inbox_messages",
        sa.Column("message_id", sa.String(length=32), primary_key=True),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("delivery_id", sa.String(length=32), nullable=False, unique=True),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("title", sa.Text()),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "payment_reminders",
        sa.Column("order_id", sa.String(length=64), primary_key=True),
        sa.Column("member_id", sa.String(length=64)),
        sa.Column("event_id", sa.String(length=64)),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("context", JSONB()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "preferences",
        sa.Column("member_id", sa.String(length=64), primary_key=True),
        sa.Column("consents", JSONB(), nullable=False),
        sa.Column("quiet_mode", sa.String(length=16), nullable=False),
        sa.Column("quiet_start", sa.Time()),
        sa.Column("quiet_end", sa.Time()),
        sa.Column("timezone", sa.String(length=64)),
        sa.Column("locale", sa.String(length=16)),
        sa.Column("erased_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "templates",
        sa.Column("event_type", sa.String(length=100), primary_key=True),
        sa.Column("channel", sa.String(length=16), primary_key=True),
        sa.Column("locale", sa.String(length=16), primary_key=True),
        sa.Column("subject", sa.Text()),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "deliveries_one_per_event_channel",
        "deliveries",
        ["event_id", "event_type", "channel"],
        unique=True,
    )
    op.create_index("deliveries_by_member", "deliveries", ["member_id", "delivery_id"])
    op.create_index(
        "deliveries_due",
        "deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "deliveries_deferred",
        "deliveries",
        ["not_before"],
        postgresql_where=sa.text("status = 'deferred'"),
    )
    op.create_index(
        "deliveries_open_by_member",
        "deliveries",
        ["member_id"],
        postgresql_where=sa.text("status IN ('queued', 'deferred')"),
    )
    op.create_index("inbox_by_member", "inbox_messages", ["member_id", "message_id"])
    op.create_index("cap_counts_by_time", "cap_counts", ["member_id", "counted_at"])
    op.create_index(
        "payment_reminders_due",
        "payment_reminders",
        ["due_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    for table in (
        "payment_reminders",
        "cap_counts",
        "inbox_messages",
        "deliveries",
        "templates",
        "preferences",
    ):
        op.drop_table(table)
