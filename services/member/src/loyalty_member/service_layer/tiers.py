"""The tier ladder: upgrades as soon as a qualifying order is paid, downgrades in tier-review."""

from __future__ import annotations

from datetime import datetime

from loyalty_shared.service import Runtime
from sqlalchemy.ext.asyncio import AsyncConnection


async def upgrade_after_paid_order(
    runtime: Runtime, conn: AsyncConnection, *, member_id: str, order_id: str, occurred_at: datetime
) -> str | None:
    """Re-evaluate a member's tier in the transaction that marked an order paid; upgrade at
    once (emitting `member.tier_changed`) when the member now qualifies for a higher tier.
    Answers the new tier, or None when it did not change. Never downgrades."""
    return None
