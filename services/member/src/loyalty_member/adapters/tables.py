"""The member service's tables (created by its Alembic migrations)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Identity,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

members = Table(
    "members",
    metadata,
    Column("member_id", String(32), primary_key=True),
    Column("phone", String(20), unique=True),  # NULL once erased
    Column("email", String(320)),
    Column("name", String(200)),
    Column("birthday", Date),
    Column("locale", String(10), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("card_no", String(32), nullable=False, unique=True),
    Column("referral_code", String(16), nullable=False, unique=True),
    Column("referred_by", String(32)),
    Column("tier", String(32), nullable=False),
    Column("store_id", String(64)),
    Column("channel", String(32)),
    Column("consents", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("erased_at", DateTime(timezone=True)),
    Column("referral_qualified_at", DateTime(timezone=True)),
    # the paid order that qualified the referral; cleared with referral_qualified_at when that
    # order is cancelled or refunded in full, so the next paid order qualifies it again
    Column("referral_order_id", String(32)),
)

identities = Table(
    "identities",
    metadata,
    Column("member_id", String(32), nullable=False),
    Column("kind", String(32), nullable=False),  # wechat_openid | push_token
    Column("value", String(512), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(32), primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("store_id", String(64)),
    Column("member_id", String(32)),  # NULL: a guest order
    Column("status", String(16), nullable=False),  # placed|paid|shipped|delivered|cancelled
    Column("currency", String(3), nullable=False),
    Column("total_minor", BigInteger, nullable=False),
    Column("paid_minor", BigInteger, nullable=False),
    Column("refunded_minor", BigInteger, nullable=False, server_default="0"),
    Column("lines", JSONB, nullable=False),
    Column("coupon_codes", JSONB, nullable=False),
    Column("member_tier", String(32)),  # the tier held before this order was paid
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("paid_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

refunds = Table(
    "refunds",
    metadata,
    Column("refund_id", String(32), primary_key=True),
    Column("order_id", String(32), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Check-ins and feedback (migration 0005).
checkins = Table(
    "checkins",
    metadata,
    Column("member_id", String(32), primary_key=True),
    Column("local_date", Date, primary_key=True),  # the day in `timezone`: one per member and day
    Column("streak_days", Integer, nullable=False),  # as recorded (and announced) at check-in
    Column("timezone", String(64), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

survey_answers = Table(
    "survey_answers",
    metadata,
    Column("survey_id", String(32), primary_key=True),
    Column("seq", BigInteger, Identity(always=False), nullable=False),  # list order and cursor
    Column("member_id", String(32), nullable=False),
    Column("score", SmallInteger),  # satisfaction 1..5
    Column("recommend", SmallInteger),  # recommend likelihood 0..10
    Column("comment", Text),  # free text: never in an event
    Column("order_id", String(32)),
    Column("ticket_id", String(32)),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

complaints = Table(
    "complaints",
    metadata,
    Column("ticket_id", String(32), primary_key=True),
    Column("seq", BigInteger, Identity(always=False), nullable=False),  # list order and cursor
    Column("member_id", String(32), nullable=False),
    Column("subject", String(200), nullable=False),  # free text: never in an event
    Column("description", Text, nullable=False),  # free text: never in an event
    Column("category", String(16), nullable=False),
    Column("channel", String(32)),
    Column("order_id", String(32)),
    Column("status", String(16), nullable=False),
    Column("timezone", String(64), nullable=False),  # the member's, when it was received
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("response_due_at", DateTime(timezone=True), nullable=False),
    Column("responded_at", DateTime(timezone=True)),  # when it first left `received`
    Column("status_changed_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

complaint_status_changes = Table(
    "complaint_status_changes",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=True),
    Column("ticket_id", String(32), nullable=False),
    Column("from_status", String(16)),  # NULL: the ticket was opened
    Column("to_status", String(16), nullable=False),
    Column("note", Text),  # free text: never in an event
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# ---------------------------------------------------------------------------------------------
# Cards, card plans and tiers (migration 0004)
# ---------------------------------------------------------------------------------------------
from sqlalchemy import Boolean  # noqa: E402  (kept with the tables that use it)

card_plans = Table(
    "card_plans",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # free | paid | tier | internal
    Column("price_minor", BigInteger),  # paid plans only
    Column("currency", String(3), nullable=False, server_default="CNY"),
    Column("period", String(8)),  # month | year, paid plans only
    Column("benefits", JSONB, nullable=False),
    Column("tier", String(32)),  # tier plans: the tier code they mirror
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

card_batches = Table(
    "card_batches",
    metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("prefix", String(8), nullable=False),
    Column("plan_code", String(64), nullable=False),
    Column("count", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Every card other than the sign-up card (members.card_no): physical batch numbers (member_id
# NULL until bound), paid, internal and tier cards.
cards = Table(
    "cards",
    metadata,
    Column("card_no", String(32), primary_key=True),
    Column("member_id", String(32)),
    Column("plan_code", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # the plan's kind, for the per-kind rules
    Column("batch_id", String(32)),
    Column("valid_from", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
    Column("issued_at", DateTime(timezone=True)),  # bound, bought or granted
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

card_purchases = Table(
    "card_purchases",
    metadata,
    Column("purchase_id", String(32), primary_key=True),
    Column("card_no", String(32), nullable=False),
    Column("member_id", String(32), nullable=False),
    Column("plan_code", String(64), nullable=False),
    Column("price_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("renewal", Boolean, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

tier_ladder = Table(
    "tier_ladder",
    metadata,
    Column("id", SmallInteger, primary_key=True),  # always 1: one ladder per service
    Column("metric", String(32), nullable=False),
    Column("tiers", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Lifetime points earned per member, from `loyalty.points` (the lifetime_points tier metric).
member_points = Table(
    "member_points",
    metadata,
    Column("member_id", String(32), primary_key=True),
    Column("lifetime_earned", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
