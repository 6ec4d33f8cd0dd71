"""Referrals: the referrer qualifies when the referred member's first order is paid."""

from __future__ import annotations

from datetime import datetime

from loyalty_shared.events.members import MemberReferralQualified
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.tables import members
from .events import emit


async def qualify_referral(
    conn: AsyncConnection, *, member_id: str, order_id: str, occurred_at: datetime
) -> str | None:
    """Call in the transaction that marks an order paid. The first call for a referred member
    emits `member.referral_qualified` (subject: the referrer) and answers the referrer; later
    calls, and members nobody referred, answer None."""
    referrer = await conn.scalar(
        update(members)
        .where(
            members.c.member_id == member_id,
            members.c.referred_by.is_not(None),
            members.c.referral_qualified_at.is_(None),
        )
        .values(referral_qualified_at=occurred_at)
        .returning(members.c.referred_by)
    )
    if referrer is None:
        return None
    await emit(
        conn,
        "member.referral_qualified",
        MemberReferralQualified(
            member_id=referrer,
            referred_member_id=member_id,
            order_id=order_id,
            occurred_at=occurred_at,
        ),
        subject=referrer,
        time=occurred_at,
    )
    return str(referrer)
