"""Cards, card plans, card batches, paid-card purchases, the tier ladder, lifetime points.

Seeds the free plan (every member's sign-up card), the default ladder bronze / silver / gold on
rolling 365-day spend, and the tier plans that mirror it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DEFAULT_TIERS = [
    {"code": "bronze", "name": "Bronze", "threshold": 0, "points_multiplier": 1.0},
    {"code": "silver", "name": "Silver", "threshold": 100000, "points_multiplier": 1.2},
    {"code": "gold", "name": "Gold", "threshold": 500000, "points_multiplier": 1.5},
]
NO_EXTRAS = {"discount_percent": 0, "free_shipping": False}


def upgrade() -> None:
    op.create_table(
        "card_plans",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("price_minor", sa.BigInteger),
        sa.Column("currency", sa.String(3), nullable=False, server_default="CNY"),
        sa.Column("period", sa.String(8)),
        sa.Column("benefits", JSONB, nullable=False),
        sa.Column("tier", sa.String(32)),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('free', 'paid', 'tier', 'internal')", name="card_plan_kind"),
        sa.CheckConstraint(
            "(kind = 'paid') = (price_minor IS NOT NULL AND period IS NOT NULL)",
            name="card_plan_paid_terms",
        ),
    )
    op.create_table(
        "card_batches",
        sa.Column("batch_id", sa.String(32), primary_key=True),
        sa.Column("prefix", sa.String(8), nullable=False),
        sa.Column("plan_code", sa.String(64), sa.ForeignKey("card_plans.code"), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "cards",
        sa.Column("card_no", sa.String(32), primary_key=True),
        sa.Column("member_id", sa.String(32), sa.ForeignKey("members.member_id")),
        sa.Column("plan_code", sa.String(64), sa.ForeignKey("card_plans.code"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("batch_id", sa.String(32), sa.ForeignKey("card_batches.batch_id")),
        sa.Column("valid_from", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("issued_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("cards_member", "cards", ["member_id"])
    op.create_index("cards_batch", "cards", ["batch_id", "card_no"])
    # One tier card per member (replaced in place on every tier change) and one card per paid or
    # internal plan (renewed in place).
    op.create_index(
        "cards_one_tier_card",
        "cards",
        ["member_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'tier'"),
    )
    op.create_index(
        "cards_one_per_plan",
        "cards",
        ["member_id", "plan_code"],
        unique=True,
        postgresql_where=sa.text("kind IN ('paid', 'internal')"),
    )
    op.create_table(
        "card_purchases",
        sa.Column("purchase_id", sa.String(32), primary_key=True),
        sa.Column("card_no", sa.String(32), sa.ForeignKey("cards.card_no"), nullable=False),
        sa.Column("member_id", sa.String(32), nullable=False),
        sa.Column("plan_code", sa.String(64), nullable=False),
        sa.Column("price_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renewal", sa.Boolean, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("card_purchases_card", "card_purchases", ["card_no", "occurred_at"])
    op.create_table(
        "tier_ladder",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("tiers", JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="tier_ladder_single_row"),
    )
    op.create_table(
        "member_points",
        sa.Column("member_id", sa.String(32), primary_key=True),
        sa.Column("lifetime_earned", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    # tier-review reads only the members above the lowest tier.
    op.create_index("members_tier", "members", ["tier"])

    bind = op.get_bind()
    tiers = [{**tier, "benefits": NO_EXTRAS} for tier in DEFAULT_TIERS]
    bind.execute(
        sa.text(
            "INSERT INTO tier_ladder (id, metric, tiers, updated_at) "
            "VALUES (1, 'spend_365d', CAST(:tiers AS jsonb), now())"
        ),
        {"tiers": json.dumps(tiers)},
    )
    plans = [
        {
            "code": "free",
            "name": "Member card",
            "kind": "free",
            "tier": None,
            "benefits": json.dumps({"points_multiplier": 1.0, **NO_EXTRAS}),
        }
    ] + [
        {
            "code": f"tier-{tier['code']}",
            "name": f"{tier['name']} card",
            "kind": "tier",
            "tier": tier["code"],
            "benefits": json.dumps({"points_multiplier": tier["points_multiplier"], **NO_EXTRAS}),
        }
        for tier in DEFAULT_TIERS
    ]
    for plan in plans:
        bind.execute(
            sa.text(
                "INSERT INTO card_plans (code, name, kind, benefits, tier, created_at, updated_at)"
                " VALUES (:code, :name, :kind, CAST(:benefits AS jsonb), :tier, now(), now())"
            ),
            plan,
        )


def downgrade() -> None:
    op.drop_index("members_tier", "members")
    op.drop_table("member_points")
    op.drop_table("tier_ladder")
    op.drop_table("card_purchases")
    op.drop_table("cards")
    op.drop_table("card_batches")
    op.drop_table("card_plans")
