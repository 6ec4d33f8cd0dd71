"""Signing a member up: store the member and emit `member.registered` in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from loyalty_shared.errors import Conflict, Unprocessable
from loyalty_shared.events.members import MemberRegistered
from loyalty_shared.service import Runtime
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from ..adapters.tables import members
from ..domain.members import InvalidPhone, new_card_no, new_referral_code, normalise_phone
from .events import emit
from .tiers import signup_tier


@dataclass(frozen=True)
class RegisterMember:
    phone: str
    email: str | None = None
    name: str | None = None
    birthday: date | None = None
    locale: str = "zh-CN"
    timezone: str = "Asia/Shanghai"
    referral_code: str | None = None
    store_id: str | None = None
    channel: str | None = None
    consents: dict[str, bool] = field(default_factory=dict)


async def register_member(runtime: Runtime, cmd: RegisterMember) -> dict[str, Any]:
    async with runtime.transaction() as conn:
        return await register_member_in(conn, cmd, now=runtime.clock.now())


async def register_member_in(
    conn: AsyncConnection, cmd: RegisterMember, *, now: datetime
) -> dict[str, Any]:
    """Sign a member up inside the caller's transaction (also used by orders that enrol the
    buyer on the spot); raises 422 `invalid_phone`, 409 `member_exists`."""
    try:
        phone = normalise_phone(cmd.phone)
    except InvalidPhone as exc:
        raise Unprocessable("invalid_phone", str(exc)) from exc
    member_id = str(ULID.from_datetime(now))
    tier = await signup_tier(conn)  # the lowest tier of the current ladder
    referred_by = None
    if cmd.referral_code:
        referred_by = await conn.scalar(
            select(members.c.member_id).where(
                members.c.referral_code == cmd.referral_code.strip().upper()
            )
        )
        if referred_by is None:
            raise Unprocessable(
                "invalid_referral_code",
                f"no member has the referral code '{cmd.referral_code}'",
            )
    row = {
        "member_id": member_id,
        "phone": phone,
        "email": cmd.email,
        "name": cmd.name,
        "birthday": cmd.birthday,
        "locale": cmd.locale,
        "timezone": cmd.timezone,
        "card_no": new_card_no(),
        "referral_code": new_referral_code(),
        "referred_by": referred_by,
        "tier": tier,
        "store_id": cmd.store_id,
        "channel": cmd.channel,
        "consents": cmd.consents,
        "created_at": now,
        "updated_at": now,
    }
    inserted = await conn.scalar(
        pg_insert(members)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["phone"])
        .returning(members.c.member_id)
    )
    if inserted is None:
        existing = await conn.scalar(select(members.c.member_id).where(members.c.phone == phone))
        raise Conflict(
            "member_exists", "a member with this phone exists already", member_id=existing
        )
    await emit(
        conn,
        "member.registered",
        MemberRegistered(
            member_id=member_id,
            card_no=row["card_no"],
            tier=tier,
            referral_code=row["referral_code"],
            referred_by=referred_by,
            store_id=cmd.store_id,
            channel=cmd.channel,
            locale=cmd.locale,
            timezone=cmd.timezone,
            consents=cmd.consents,
            registered_at=now,
        ),
        subject=member_id,
        time=now,
    )
    return row


async def get_member(runtime: Runtime, member_id: str) -> dict[str, Any] | None:
    async with runtime.reading() as conn:
        row = (await conn.execute(select(members).where(members.c.member_id == member_id))).first()
    return dict(row._mapping) if row else None


__all__ = ["RegisterMember", "get_member", "register_member"]
