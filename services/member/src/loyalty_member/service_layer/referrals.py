"""Referrals: the referrer qualifies when the referred member's first order is paid, and the
referral follows that order: when it is cancelled (after payment) or refunded in full, the
referral is open again and the referred member's next paid order qualifies it anew (contract §5).
The points service reverses the referrer's bonus itself, from the order events."""

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
    """Call in the transaction that marks an order paid. While the referral of a referred
    member is open, the call emits `member.referral_qualified` (subject: the referrer, naming
    `order_id`), closes the referral on that order and answers the referrer; later calls, and
    members nobody referred, answer None."""
    referrer = await conn.scalar(
        update(members)
        .where(
            members.c.member_id == member_id,
            members.c.referred_by.is_not(None),
            members.c.referral_qualified_at.is_(None),
        )
        .values(referral_qualified_at=occurred_at, referral_order_id=order_id)
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


async def reopen_referral(conn: AsyncConnection, *, member_id: str, order_id: str) -> bool:
    """Call in the transaction that cancels a paid order or refunds it in full (the caller holds
    the order's lock). When that order is the one that qualified the member's referral, the
    referral is open again (no event: the points service reverses the bonus from the order
    event) and the answer is True; any other order changes nothing."""
    reopened = await conn.scalar(
        update(members)
        .where(members.c.member_id == member_id, members.c.referral_order_id == order_id)
        .values(referral_qualified_at=None, referral_order_id=None)
        .returning(members.c.member_id)
    )
    return reopened is not None
