"""The notifier's tables (created by its Alembic migrations)."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, Time
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

preferences = Table(
    "preferences",
    metadata,
    Column("member_id", String(64), primary_key=True),
    Column("consents", JSONB, nullable=False),  # marketing consent per channel
    Column("quiet_mode", String(16), nullable=False),  # default | custom | off
    Column("quiet_start", Time),
    Column("quiet_end", Time),
    Column("timezone", String(64)),
    Column("locale", String(16)),
    Column("erased_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

templates = Table(
    "templates",
    metadata,
    Column("event_type", String(100), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("locale", String(16), primary_key=True),
    Column("subject", Text),
    Column("body", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("delivery_id", String(32), primary_key=True),
    Column("member_id", String(64), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(100), nullable=False),  # the message type (selects the template)
    Column("channel", String(16), nullable=False),
    Column("category", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("attempts", Integer, nullable=False),
    Column("provider", String(100)),
    Column("provider_index", Integer, nullable=False),
    Column("provider_attempts", Integer, nullable=False),
    Column("locale", String(16)),
    Column("context", JSONB, nullable=False),  # the event's data: never personal data
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("not_before", DateTime(timezone=True)),  # a deferred delivery's release time
    Column("claimed_until", DateTime(timezone=True)),  # a dispatcher is sending it
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
)

inbox_messages = Table(
    "inbox_messages",
    metadata,
    Column("message_id", String(32), primary_key=True),
    Column("member_id", String(64), nullable=False),
    Column("delivery_id", String(32), nullable=False, unique=True),
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("category", String(16), nullable=False),
    Column("title", Text),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("read_at", DateTime(timezone=True)),
)

cap_counts = Table(
    "cap_counts",
    metadata,
    Column("member_id", String(64), primary_key=True),
    Column("event_id", String(64), primary_key=True),
    Column("counted_at", DateTime(timezone=True), nullable=False),
)

payment_reminders = Table(
    "payment_reminders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("member_id", String(64)),
    Column("event_id", String(64)),  # the order.placed event
    Column("status", String(16), nullable=False),  # pending | sent | cancelled | expired
    Column("due_at", DateTime(timezone=True)),
    Column("context", JSONB),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
