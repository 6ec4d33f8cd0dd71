"""Looking members up, changing them, their channel identities, and erasure."""

from __future__ import annotations

from typing import Any

from loyalty_shared.errors import Conflict, NotFound, Unprocessable
from loyalty_shared.events.members import MemberErased, MemberUpdated
from loyalty_shared.idempotency import forget_answers_about
from loyalty_shared.service import Runtime
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.tables import identities, members
from ..domain.members import InvalidPhone, normalise_phone
from .cards import member_id_by_card_no
from .events import emit
from .feedback import erase_feedback_text

PERSONAL_FIELDS = ("phone", "email", "name", "birthday")
# Fields whose new values other services need (they carry no personal data); for the others,
# member.updated names the field but never its value.
SHARED_FIELDS = ("locale", "timezone", "consents", "store_id")
IDENTITY_KINDS = ("wechat_openid", "push_token")


def _phone(raw: str) -> str:
    try:
        return normalise_phone(raw)
    except InvalidPhone as exc:
        raise Unprocessable("invalid_phone", str(exc)) from exc


async def find_members(
    runtime: Runtime,
    *,
    phone: str | None = None,
    card_no: str | None = None,
    email: str | None = None,
    limit: int = 50,
    after: str | None = None,
) -> list[dict[str, Any]]:
    query = select(members).where(members.c.erased_at.is_(None))
    if after is not None:
        query = query.where(members.c.member_id > after)
    if phone is not None:
        query = query.where(members.c.phone == _phone(phone))
    elif card_no is not None:
        async with runtime.reading() as conn:
            holder = await member_id_by_card_no(conn, card_no.strip())  # sign-up or bound card
        query = query.where(members.c.member_id == holder)
    elif email is not None:
        query = query.where(func.lower(members.c.email) == email.strip().lower())
    async with runtime.reading() as conn:
        rows = await conn.execute(query.order_by(members.c.member_id).limit(limit))
        return [dict(r._mapping) for r in rows]


async def _locked_member(conn: AsyncConnection, member_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(members).where(members.c.member_id == member_id).with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound(f"no member '{member_id}'")
    return dict(row._mapping)


async def _refuse_taken_phone(conn: AsyncConnection, phone: str, member_id: str) -> None:
    owner = await conn.scalar(
        select(members.c.member_id).where(
            members.c.phone == phone, members.c.member_id != member_id
        )
    )
    if owner is not None:
        raise Conflict("member_exists", "another member has this phone", member_id=owner)


async def update_member(
    runtime: Runtime, member_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Apply a PATCH: only the fields sent change; `consents` merge by channel. A change that
    changes nothing emits nothing."""
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        current = await _locked_member(conn, member_id)
        if current["erased_at"] is not None:
            raise Conflict("member_erased", "this member was erased; it cannot be changed")
        wanted = dict(changes)
        if "phone" in wanted:
            if wanted["phone"] is None:
                raise Unprocessable("invalid_phone", "a member keeps a phone; it cannot be removed")
            wanted["phone"] = _phone(wanted["phone"])
        if "consents" in wanted:
            wanted["consents"] = {**current["consents"], **(wanted["consents"] or {})}
        changed = {k: v for k, v in wanted.items() if current.get(k) != v}
        if not changed:
            return current
        if "phone" in changed:
            await _refuse_taken_phone(conn, changed["phone"], member_id)
        try:
            async with conn.begin_nested():  # a savepoint: the race below leaves conn usable
                row = (
                    await conn.execute(
                        update(members)
                        .where(members.c.member_id == member_id)
                        .values(**changed, updated_at=now)
                        .returning(*members.c)
                    )
                ).one()
        except IntegrityError:
            if "phone" not in changed:
                raise
            # another change gave the phone to someone else between the check and the update
            await _refuse_taken_phone(conn, changed["phone"], member_id)
            raise
        shared = {k: changed[k] for k in SHARED_FIELDS if k in changed}
        await emit(
            conn,
            "member.updated",
            MemberUpdated(member_id=member_id, changed=sorted(changed), occurred_at=now, **shared),
            subject=member_id,
            time=now,
        )
        return dict(row._mapping)


async def erase_member(runtime: Runtime, member_id: str, reason: str | None = None) -> bool:
    """Scrub personal data, keep the member_id (ledgers stay under it), emit member.erased.
    Answers False when the member was erased already (nothing happens again)."""
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        current = await _locked_member(conn, member_id)
        if current["erased_at"] is not None:
            return False
        await conn.execute(
            update(members)
            .where(members.c.member_id == member_id)
            .values(**dict.fromkeys(PERSONAL_FIELDS), consents={}, erased_at=now, updated_at=now)
        )
        await conn.execute(delete(identities).where(identities.c.member_id == member_id))
        await erase_feedback_text(conn, member_id)
        await forget_answers_about(conn, member_id)  # stored replies to its Idempotency-Keys
        await emit(
            conn,
            "member.erased",
            MemberErased(member_id=member_id, reason=reason, occurred_at=now),
            subject=member_id,
            time=now,
        )
        return True


async def add_identity(
    runtime: Runtime, member_id: str, kind: str, value: str
) -> tuple[dict[str, Any], bool]:
    """Record a channel address (never sent in events); answers (identity, created)."""
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        current = await _locked_member(conn, member_id)
        if current["erased_at"] is not None:
            raise Conflict("member_erased", "this member was erased; it cannot be changed")
        created = await conn.scalar(
            pg_insert(identities)
            .values(member_id=member_id, kind=kind, value=value, created_at=now)
            .on_conflict_do_nothing()
            .returning(identities.c.created_at)
        )
        row = (
            await conn.execute(
                select(identities).where(
                    identities.c.member_id == member_id,
                    identities.c.kind == kind,
                    identities.c.value == value,
                )
            )
        ).one()
        return dict(row._mapping), created is not None


async def list_identities(runtime: Runtime, member_id: str) -> list[dict[str, Any]]:
    async with runtime.engine.connect() as conn:
        if (
            await conn.scalar(select(members.c.member_id).where(members.c.member_id == member_id))
            is None
        ):
            raise NotFound(f"no member '{member_id}'")
        rows = await conn.execute(
            select(identities)
            .where(identities.c.member_id == member_id)
            .order_by(identities.c.kind, identities.c.created_at)
        )
        return [dict(r._mapping) for r in rows]
