"""Cards and card plans: plans, physical card batches, binding, paid-card purchases, staff cards."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loyalty_shared.errors import Conflict, NotFound, Unprocessable
from loyalty_shared.events.members import CardBenefits, MemberCardIssued
from loyalty_shared.paging import cursor_after, encode_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from ..adapters.tables import card_batches, card_plans, card_purchases, cards, members
from ..domain.cards import (
    BATCH_PLAN_KINDS,
    FREE_PLAN,
    FieldError,
    card_no_well_formed,
    card_status,
    new_batch_card_nos,
    plan_errors,
    renewal_period,
)
from .events import emit

# Virtual cards (paid, internal, tier) get numbers like sign-up cards do.
VIRTUAL_PREFIX = "8"
_NUMBER_ROUNDS = 10  # rounds of fresh numbers before giving up on a crowded prefix


def invalid(errors: list[FieldError]) -> Unprocessable:
    """A 422 `validation_error` in the shape FastAPI's own validation uses."""
    items = [{"loc": ["body", *loc], "msg": msg, "type": "value_error"} for loc, msg in errors]
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in items[:5])
    return Unprocessable("validation_error", detail, errors=items)


# ---------------------------------------------------------------------------------------------
# Card plans
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateCardPlan:
    code: str
    name: str
    kind: str
    benefits: dict[str, Any]
    price_minor: int | None = None
    currency: str = "CNY"
    period: str | None = None


def plan_view(row: Row[Any] | dict[str, Any]) -> dict[str, Any]:
    plan = dict(row._mapping) if isinstance(row, Row) else dict(row)
    return {
        "code": plan["code"],
        "name": plan["name"],
        "kind": plan["kind"],
        "price_minor": plan["price_minor"],
        "currency": plan["currency"],
        "period": plan["period"],
        "benefits": CardBenefits(**plan["benefits"]).model_dump(),
        "tier": plan["tier"],
        "active": plan["active"],
        "created_at": plan["created_at"],
        "updated_at": plan["updated_at"],
    }


async def create_plan(runtime: Runtime, cmd: CreateCardPlan) -> dict[str, Any]:
    """422 `validation_error` for a plan that breaks the rules; 409 `card_plan_exists`."""
    errors = plan_errors(
        code=cmd.code, kind=cmd.kind, price_minor=cmd.price_minor, period=cmd.period
    )
    if errors:
        raise invalid(errors)
    now = runtime.clock.now()
    row = {
        "code": cmd.code,
        "name": cmd.name,
        "kind": cmd.kind,
        "price_minor": cmd.price_minor,
        "currency": cmd.currency,
        "period": cmd.period,
        "benefits": CardBenefits(**cmd.benefits).model_dump(),
        "tier": None,
        "active": True,
        "created_at": now,
        "updated_at": now,
    }
    async with runtime.transaction() as conn:
        created = await conn.scalar(
            pg_insert(card_plans)
            .values(**row)
            .on_conflict_do_nothing()
            .returning(card_plans.c.code)
        )
    if created is None:
        raise Conflict("card_plan_exists", f"a card plan with the code '{cmd.code}' exists")
    return plan_view(row)


async def list_plans(
    runtime: Runtime, *, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    query = select(card_plans).order_by(card_plans.c.code).limit(limit + 1)
    if kind:
        query = query.where(card_plans.c.kind == kind)
    if after := cursor_after(cursor, 1):  # the last code of the page before
        query = query.where(card_plans.c.code > after[0])
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    page = [plan_view(r) for r in rows[:limit]]
    return page, (encode_cursor(page[-1]["code"]) if len(rows) > limit else None)


async def get_plan(runtime: Runtime, code: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(select(card_plans).where(card_plans.c.code == code))).first()
    if row is None:
        raise NotFound(f"no card plan '{code}'")
    return plan_view(row)


async def _plan_for(conn: AsyncConnection, code: str, *kinds: str) -> dict[str, Any]:
    """The plan a request names: 422 `unknown_card_plan`, or `wrong_card_plan_kind`."""
    row = (await conn.execute(select(card_plans).where(card_plans.c.code == code))).first()
    if row is None or not row.active:
        raise Unprocessable("unknown_card_plan", f"no card plan '{code}'", plan_code=code)
    if row.kind not in kinds:
        raise Unprocessable(
            "wrong_card_plan_kind",
            f"'{code}' is a {row.kind} plan; this needs a {' or '.join(kinds)} plan",
            plan_code=code,
            plan_kind=row.kind,
        )
    return dict(row._mapping)


# ---------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------


async def lock_member(conn: AsyncConnection, member_id: str) -> Any:
    """The member row, locked for this transaction: one card or tier change at a time."""
    row = (
        await conn.execute(
            select(members.c.member_id, members.c.timezone, members.c.erased_at)
            .where(members.c.member_id == member_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound(f"no member '{member_id}'")
    if row.erased_at is not None:
        raise Conflict("member_erased", f"member '{member_id}' has been erased")
    return row


_INSERT_CARDS = text(
    """
    INSERT INTO cards (card_no, member_id, plan_code, kind, batch_id, valid_from, expires_at,
                       issued_at, created_at, updated_at)
    SELECT n.* FROM unnest(
        CAST(:card_no AS varchar[]), CAST(:member_id AS varchar[]), CAST(:plan_code AS varchar[]),
        CAST(:kind AS varchar[]), CAST(:batch_id AS varchar[]),
        CAST(:valid_from AS timestamptz[]), CAST(:expires_at AS timestamptz[]),
        CAST(:issued_at AS timestamptz[]), CAST(:created_at AS timestamptz[]),
        CAST(:updated_at AS timestamptz[])
    ) AS n(card_no, member_id, plan_code, kind, batch_id, valid_from, expires_at, issued_at,
           created_at, updated_at)
    WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.card_no = n.card_no)
    ON CONFLICT DO NOTHING
    RETURNING card_no
    """
)
_CARD_COLUMNS = (
    "member_id",
    "plan_code",
    "kind",
    "batch_id",
    "valid_from",
    "expires_at",
    "issued_at",
    "created_at",
    "updated_at",
)


async def insert_cards(
    conn: AsyncConnection, rows: list[dict[str, Any]], prefix: str = VIRTUAL_PREFIX
) -> list[dict[str, Any]]:
    """Insert cards under fresh unique numbers (none equal to a card or a sign-up card); a
    number taken meanwhile is drawn again. Answers the rows with their `card_no`."""
    pending = list(rows)
    done: list[dict[str, Any]] = []
    for _ in range(_NUMBER_ROUNDS):
        if not pending:
            return done
        numbered = [
            {**row, "card_no": no}
            for row, no in zip(pending, new_batch_card_nos(prefix, len(pending)), strict=True)
        ]
        params: dict[str, list[Any]] = {"card_no": [r["card_no"] for r in numbered]}
        for column in _CARD_COLUMNS:
            params[column] = [r.get(column) for r in numbered]
        inserted = {r[0] for r in await conn.execute(_INSERT_CARDS, params)}
        done += [r for r in numbered if r["card_no"] in inserted]
        pending = [r for r in numbered if r["card_no"] not in inserted]
    if pending:
        raise Conflict(
            "card_numbers_exhausted",
            f"could not find {len(pending)} unused card numbers under the prefix '{prefix}'",
        )
    return done


def card_issued(
    *,
    member_id: str,
    card_no: str,
    plan: dict[str, Any],
    action: str,
    occurred_at: datetime,
    valid_from: datetime | None,
    expires_at: datetime | None = None,
    price_minor: int | None = None,
) -> MemberCardIssued:
    return MemberCardIssued(
        member_id=member_id,
        card_no=card_no,
        plan_code=plan["code"],
        plan_kind=plan["kind"],
        action=action,  # type: ignore[arg-type]
        valid_from=valid_from,
        expires_at=expires_at,
        price_minor=price_minor,
        currency=plan.get("currency") or "CNY",
        benefits=CardBenefits(**plan["benefits"]),
        occurred_at=occurred_at,
    )


def card_view(card: dict[str, Any], plan: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "card_no": card["card_no"],
        "member_id": card.get("member_id"),
        "plan_code": plan["code"],
        "plan_name": plan["name"],
        "plan_kind": plan["kind"],
        "status": card_status(card.get("member_id"), card.get("expires_at"), now),
        "batch_id": card.get("batch_id"),
        "valid_from": card.get("valid_from"),
        "expires_at": card.get("expires_at"),
        "issued_at": card.get("issued_at"),
        "benefits": CardBenefits(**plan["benefits"]).model_dump(),
    }


async def member_cards(runtime: Runtime, member_id: str) -> list[dict[str, Any]]:
    """The member's cards: the sign-up card (free plan) first, then the others as issued."""
    now = runtime.clock.now()
    async with runtime.engine.connect() as conn:
        member = (
            await conn.execute(
                select(members.c.member_id, members.c.card_no, members.c.created_at).where(
                    members.c.member_id == member_id
                )
            )
        ).first()
        if member is None:
            raise NotFound(f"no member '{member_id}'")
        plans = {
            r.code: dict(r._mapping) for r in await conn.execute(select(card_plans))
        }  # a handful of rows
        rows = (
            await conn.execute(
                select(cards)
                .where(cards.c.member_id == member_id)
                .order_by(cards.c.issued_at, cards.c.card_no)
            )
        ).all()
    signup = {
        "card_no": member.card_no,
        "member_id": member_id,
        "valid_from": member.created_at,
        "issued_at": member.created_at,
    }
    views = [card_view(signup, plans[FREE_PLAN], now)]
    views += [card_view(dict(r._mapping), plans[r.plan_code], now) for r in rows]
    return views


async def member_id_by_card_no(conn: AsyncConnection, card_no: str) -> str | None:
    """Whose card this is: a sign-up card or any bound card (for lookups and orders intake)."""
    return await conn.scalar(  # type: ignore[no-any-return]
        text(
            "SELECT member_id FROM members WHERE card_no = :c UNION ALL "
            "SELECT member_id FROM cards WHERE card_no = :c AND member_id IS NOT NULL LIMIT 1"
        ),
        {"c": card_no},
    )


async def purchase_card(
    runtime: Runtime, member_id: str, plan_code: str, occurred_at: datetime | None = None
) -> dict[str, Any]:
    """Buy or renew a paid card: a new card, or the member's card of that plan extended by one
    period from the later of the purchase time and its current expiry."""
    now = runtime.clock.now()
    at = occurred_at or now
    async with runtime.transaction() as conn:
        member = await lock_member(conn, member_id)
        plan = await _plan_for(conn, plan_code, "paid")
        existing = (
            await conn.execute(
                select(cards).where(
                    cards.c.member_id == member_id,
                    cards.c.plan_code == plan_code,
                    cards.c.kind == "paid",
                )
            )
        ).first()
        current_expiry = existing.expires_at if existing else None
        start, end = renewal_period(at, current_expiry, plan["period"], member.timezone)
        if existing is not None:
            lapsed = current_expiry is None or current_expiry <= at
            valid_from = at if lapsed else existing.valid_from
            await conn.execute(
                cards.update()
                .where(cards.c.card_no == existing.card_no)
                .values(valid_from=valid_from, expires_at=end, updated_at=now)
            )
            card = {**dict(existing._mapping), "valid_from": valid_from, "expires_at": end}
        else:
            (card,) = await insert_cards(
                conn,
                [
                    {
                        "member_id": member_id,
                        "plan_code": plan_code,
                        "kind": "paid",
                        "valid_from": at,
                        "expires_at": end,
                        "issued_at": at,
                        "created_at": now,
                        "updated_at": now,
                    }
                ],
            )
        purchase = {
            "purchase_id": str(ULID.from_datetime(now)),
            "card_no": card["card_no"],
            "member_id": member_id,
            "plan_code": plan_code,
            "price_minor": plan["price_minor"],
            "currency": plan["currency"],
            "period_start": start,
            "period_end": end,
            "renewal": existing is not None,
            "occurred_at": at,
            "created_at": now,
        }
        await conn.execute(card_purchases.insert().values(**purchase))
        await emit(
            conn,
            "member.card_issued",
            card_issued(
                member_id=member_id,
                card_no=card["card_no"],
                plan=plan,
                action="renewed" if existing is not None else "issued",
                occurred_at=at,
                valid_from=card["valid_from"],
                expires_at=end,
                price_minor=plan["price_minor"],
            ),
            subject=member_id,
            time=at,
        )
    view = card_view(card, plan, now)
    view["purchase"] = {
        k: purchase[k]
        for k in (
            "purchase_id",
            "price_minor",
            "currency",
            "period_start",
            "period_end",
            "renewal",
            "occurred_at",
        )
    }
    return view


async def issue_internal_card(runtime: Runtime, member_id: str, plan_code: str) -> dict[str, Any]:
    """Grant an internal (staff) card; 409 `card_already_issued` if the member holds one of the
    plan already."""
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        await lock_member(conn, member_id)
        plan = await _plan_for(conn, plan_code, "internal")
        existing = await conn.scalar(
            select(cards.c.card_no).where(
                cards.c.member_id == member_id,
                cards.c.plan_code == plan_code,
                cards.c.kind == "internal",
            )
        )
        if existing is not None:
            raise Conflict(
                "card_already_issued",
                f"the member holds a '{plan_code}' card already",
                card_no=existing,
            )
        (card,) = await insert_cards(
            conn,
            [
                {
                    "member_id": member_id,
                    "plan_code": plan_code,
                    "kind": "internal",
                    "valid_from": now,
                    "issued_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        await emit(
            conn,
            "member.card_issued",
            card_issued(
                member_id=member_id,
                card_no=card["card_no"],
                plan=plan,
                action="issued",
                occurred_at=now,
                valid_from=now,
            ),
            subject=member_id,
            time=now,
        )
    return card_view(card, plan, now)


# ---------------------------------------------------------------------------------------------
# Physical card batches and binding
# ---------------------------------------------------------------------------------------------


async def create_batch(
    runtime: Runtime, *, count: int, prefix: str, plan_code: str = FREE_PLAN
) -> dict[str, Any]:
    """Generate `count` unassigned card numbers for printing."""
    now = runtime.clock.now()
    batch_id = str(ULID.from_datetime(now))
    async with runtime.transaction() as conn:
        plan = await _plan_for(conn, plan_code, *sorted(BATCH_PLAN_KINDS))
        await conn.execute(
            card_batches.insert().values(
                batch_id=batch_id, prefix=prefix, plan_code=plan_code, count=count, created_at=now
            )
        )
        row = {
            "plan_code": plan_code,
            "kind": plan["kind"],
            "batch_id": batch_id,
            "created_at": now,
            "updated_at": now,
        }
        inserted = await insert_cards(conn, [row] * count, prefix)
    return {
        "batch_id": batch_id,
        "prefix": prefix,
        "plan_code": plan_code,
        "count": count,
        "created_at": now,
        "card_nos": sorted(r["card_no"] for r in inserted),
    }


async def batch_summary(runtime: Runtime, batch_id: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        batch = (
            await conn.execute(select(card_batches).where(card_batches.c.batch_id == batch_id))
        ).first()
        if batch is None:
            raise NotFound(f"no card batch '{batch_id}'")
        bound = await conn.scalar(
            select(func.count())
            .select_from(cards)
            .where(cards.c.batch_id == batch_id, cards.c.member_id.is_not(None))
        )
    return {
        **dict(batch._mapping),
        "bound": int(bound or 0),
        "unbound": batch.count - int(bound or 0),
    }


async def batch_cards(
    runtime: Runtime, batch_id: str, *, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    query = (
        select(cards.c.card_no, cards.c.member_id, cards.c.issued_at)
        .where(cards.c.batch_id == batch_id)
        .order_by(cards.c.card_no)
        .limit(limit + 1)
    )
    if status == "bound":
        query = query.where(cards.c.member_id.is_not(None))
    elif status == "unbound":
        query = query.where(cards.c.member_id.is_(None))
    if after := cursor_after(cursor, 1):  # the last card number of the page before
        query = query.where(cards.c.card_no > after[0])
    async with runtime.engine.connect() as conn:
        exists = await conn.scalar(
            select(card_batches.c.batch_id).where(card_batches.c.batch_id == batch_id)
        )
        if exists is None:
            raise NotFound(f"no card batch '{batch_id}'")
        rows = (await conn.execute(query)).all()
    items = [
        {"card_no": r.card_no, "member_id": r.member_id, "bound_at": r.issued_at}
        for r in rows[:limit]
    ]
    return items, (encode_cursor(items[-1]["card_no"]) if len(rows) > limit else None)


def normalise_card_no(raw: str) -> str:
    """Printed numbers come grouped: '8800 1234 5678 9012' and '8800-1234-...' are accepted."""
    return raw.strip().replace(" ", "").replace("-", "")


async def bind_card(
    runtime: Runtime, member_id: str, raw_card_no: str
) -> tuple[dict[str, Any], bool]:
    """Bind an unassigned physical card to a member. Answers the card and whether it was bound
    now (False: it was this member's already). 422 `invalid_card_no` for a number that is not
    well formed or was never generated; 409 `card_already_bound` for another member's card."""
    card_no = normalise_card_no(raw_card_no)
    if not card_no_well_formed(card_no):
        raise Unprocessable(
            "invalid_card_no",
            "a card number is 16 digits ending in a valid check digit",
            card_no=raw_card_no[:64],
        )
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        await lock_member(conn, member_id)
        # Race-safe: of two binds of one number, the second finds member_id set and gets nothing.
        bound = (
            await conn.execute(
                cards.update()
                .where(
                    cards.c.card_no == card_no,
                    cards.c.member_id.is_(None),
                    cards.c.batch_id.is_not(None),
                )
                .values(member_id=member_id, valid_from=now, issued_at=now, updated_at=now)
                .returning(*cards.c)
            )
        ).first()
        if bound is None:
            owner = await member_id_by_card_no(conn, card_no)
            if owner is None:
                raise Unprocessable(
                    "invalid_card_no", f"no card '{card_no}' was generated", card_no=card_no
                )
            if owner != member_id:
                raise Conflict("card_already_bound", f"card '{card_no}' is bound already")
        else:
            card = dict(bound._mapping)
            plan = dict(
                (
                    await conn.execute(
                        select(card_plans).where(card_plans.c.code == card["plan_code"])
                    )
                )
                .one()
                ._mapping
            )
            await emit(
                conn,
                "member.card_issued",
                card_issued(
                    member_id=member_id,
                    card_no=card_no,
                    plan=plan,
                    action="bound",
                    occurred_at=now,
                    valid_from=now,
                ),
                subject=member_id,
                time=now,
            )
    if bound is None:  # the member's own card already: answer it again, emit nothing
        held = await member_cards(runtime, member_id)
        return next(c for c in held if c["card_no"] == card_no), False
    return card_view(card, plan, now), True
