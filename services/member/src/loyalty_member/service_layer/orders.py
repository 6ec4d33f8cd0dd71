"""Orders intake: record orders posted by POS terminals and shops, their status and refunds, and
emit `order.*` events in the same transaction.

Locks: a status change or refund locks the order row, then (when it pays the order, cancels it
after payment or completes its refund) the member row; a new order locks its member row, then
inserts itself. No writer takes an existing order's lock after a member's, so no two can wait
for each other in a circle. Paying holds the member lock so that `member_tier` and
`paid_order_count` are read and counted one paid order at a time; a cancel or full refund
reopens a referral by updating the member row, so a concurrent payment waits for it to commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loyalty_shared.errors import Conflict, NotFound, ProblemError, Unprocessable
from loyalty_shared.events.orders import (
    OrderCancelled,
    OrderDelivered,
    OrderLine,
    OrderPaid,
    OrderPlaced,
    OrderRefunded,
    OrderShipped,
)
from loyalty_shared.paging import decode_cursor, encode_cursor, invalid_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from ..adapters.tables import members, orders, refunds
from ..domain import orders as rules
from ..domain.members import InvalidPhone, normalise_phone
from . import cards, referrals, tiers
from .events import emit
from .registration import RegisterMember, register_member_in

UNKNOWN_MEMBER = "unknown_member"


@dataclass(frozen=True)
class PlaceOrder:
    channel: str
    external_id: str
    status: str  # placed | paid
    currency: str
    total_minor: int
    paid_minor: int
    lines: Sequence[Mapping[str, Any]] = ()
    coupon_codes: Sequence[str] = ()
    store_id: str | None = None
    member_id: str | None = None
    phone: str | None = None
    card_no: str | None = None
    enroll_if_unknown: bool = False
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class ChangeOrderStatus:
    order_id: str
    status: str  # paid | shipped | delivered | cancelled
    occurred_at: datetime | None = None
    carrier: str | None = None  # order.shipped only
    tracking_no: str | None = None  # order.shipped only
    reason: str | None = None  # order.cancelled only


@dataclass(frozen=True)
class RefundOrder:
    order_id: str
    external_id: str
    amount_minor: int
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class RefundOutcome:
    refund: dict[str, Any]
    order: dict[str, Any]
    created: bool


@dataclass(frozen=True)
class OrderPage:
    items: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


class _AlreadyRecorded(Exception):
    """Another request recorded the same (channel, external_id) first: undo this one."""


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


async def place_order(runtime: Runtime, cmd: PlaceOrder) -> tuple[dict[str, Any], bool]:
    """Record an order once per (channel, external_id). Answers the order and whether this call
    created it; a repeat answers the first order as it is now and changes nothing, whatever
    its body says (the first wins)."""
    now = runtime.clock.now()
    occurred_at = _business_time(cmd.occurred_at, now)
    try:
        rules.check_currency(cmd.currency)
        rules.check_amounts(cmd.total_minor, cmd.paid_minor)
    except rules.OrderRuleViolation as exc:
        raise _problem(exc, ["body"]) from exc
    if cmd.status not in (rules.PLACED, rules.PAID):
        raise _problem(
            rules.OrderRuleViolation("status must be placed or paid"), ["body", "status"]
        )
    try:
        async with runtime.transaction() as conn:
            existing = await _order_by_external_id(conn, cmd.channel, cmd.external_id)
            if existing is not None:
                return existing, False
            member = await _resolve_member(conn, cmd, now=now)
            paid = cmd.status == rules.PAID
            row = {
                "order_id": str(ULID.from_datetime(now)),
                "channel": cmd.channel,
                "external_id": cmd.external_id,
                "store_id": cmd.store_id,
                "member_id": member["member_id"] if member else None,
                "status": cmd.status,
                "currency": cmd.currency,
                "total_minor": cmd.total_minor,
                "paid_minor": cmd.paid_minor,
                "refunded_minor": 0,
                "lines": [dict(line) for line in cmd.lines],
                "coupon_codes": list(cmd.coupon_codes),
                "member_tier": member["tier"] if member and paid else None,
                "occurred_at": occurred_at,
                "paid_at": occurred_at if paid else None,
                "created_at": now,
                "updated_at": now,
            }
            inserted = (
                await conn.execute(
                    pg_insert(orders)
                    .values(**row)
                    .on_conflict_do_nothing(index_elements=["channel", "external_id"])
                    .returning(*orders.c)
                )
            ).first()
            if inserted is None:
                raise _AlreadyRecorded
            order = dict(inserted._mapping)
            if paid:
                await _order_paid(conn, order, member, now=now)
            else:
                await emit(
                    conn,
                    "order.placed",
                    OrderPlaced(**_amounts(order)),
                    **_routing(order),
                    time=occurred_at,
                )
            return order, True
    except _AlreadyRecorded:
        # A concurrent request with the same (channel, external_id) won; whatever this one
        # wrote (an enrolment, say) was rolled back with it.
        async with runtime.engine.connect() as conn:
            winner = await _order_by_external_id(conn, cmd.channel, cmd.external_id)
        assert winner is not None
        return winner, False


async def change_order_status(
    runtime: Runtime, cmd: ChangeOrderStatus
) -> tuple[dict[str, Any], bool]:
    """Move an order along placed → paid → shipped → delivered, or cancel it. Answers the order
    and whether it changed; the status it has already is a no-op (no event)."""
    now = runtime.clock.now()
    occurred_at = _business_time(cmd.occurred_at, now)
    async with runtime.transaction() as conn:
        order = await _lock_order(conn, cmd.order_id)
        try:
            changed = rules.status_change(order["status"], cmd.status)
        except rules.OrderRuleViolation as exc:
            raise _problem(exc, ["body", "status"]) from exc
        if not changed:
            return order, False
        previous = order["status"]
        values: dict[str, Any] = {"status": cmd.status, "updated_at": now}
        if cmd.status == rules.PAID:
            member = None
            if order["member_id"] is not None:
                # an order placed before its member was erased may still be paid
                member = await _lock_member(
                    conn, members.c.member_id == order["member_id"], include_erased=True
                )
            values["paid_at"] = occurred_at
            values["member_tier"] = member["tier"] if member else None
        updated = (
            await conn.execute(
                update(orders)
                .where(orders.c.order_id == order["order_id"])
                .values(**values)
                .returning(*orders.c)
            )
        ).one()
        order = dict(updated._mapping)
        if cmd.status == rules.PAID:
            await _order_paid(conn, order, member, now=now)
        elif cmd.status == rules.SHIPPED:
            data = OrderShipped(
                **_identity(order, occurred_at), carrier=cmd.carrier, tracking_no=cmd.tracking_no
            )
            await emit(conn, "order.shipped", data, **_routing(order), time=occurred_at)
        elif cmd.status == rules.DELIVERED:
            data = OrderDelivered(**_identity(order, occurred_at))
            await emit(conn, "order.delivered", data, **_routing(order), time=occurred_at)
        else:
            data = OrderCancelled(
                **_identity(order, occurred_at),
                previous_status=previous,
                currency=order["currency"],
                total_minor=order["total_minor"],
                paid_minor=rules.paid_before(previous, order["paid_minor"]),
                refunded_total_minor=order["refunded_minor"],
                coupon_codes=order["coupon_codes"],
                reason=cmd.reason,
            )
            await emit(conn, "order.cancelled", data, **_routing(order), time=occurred_at)
            if order["member_id"] is not None and order["paid_at"] is not None:
                # a referral follows the order that qualified it (contract §5)
                await referrals.reopen_referral(
                    conn, member_id=order["member_id"], order_id=order["order_id"]
                )
        return order, True


async def refund_order(runtime: Runtime, cmd: RefundOrder) -> RefundOutcome:
    """Refund part of a paid order, once per (order, external_id). Refunds never add up to more
    than was paid: the order row is locked while the refund is judged and recorded."""
    now = runtime.clock.now()
    occurred_at = _business_time(cmd.occurred_at, now)
    async with runtime.transaction() as conn:
        order = await _lock_order(conn, cmd.order_id)
        existing = (
            await conn.execute(
                select(refunds).where(
                    refunds.c.order_id == order["order_id"],
                    refunds.c.external_id == cmd.external_id,
                )
            )
        ).first()
        if existing is not None:
            return RefundOutcome(dict(existing._mapping), order, created=False)
        try:
            refunded_total = rules.refunded_total_after(
                order["status"],
                paid_minor=order["paid_minor"],
                refunded_minor=order["refunded_minor"],
                amount_minor=cmd.amount_minor,
            )
        except rules.OrderRuleViolation as exc:
            raise _problem(exc, ["body", "amount_minor"]) from exc
        refund = {
            "refund_id": str(ULID.from_datetime(now)),
            "order_id": order["order_id"],
            "external_id": cmd.external_id,
            "amount_minor": cmd.amount_minor,
            "occurred_at": occurred_at,
            "created_at": now,
        }
        # the order lock serialises refunds of one order, so this insert cannot conflict
        await conn.execute(pg_insert(refunds).values(**refund))
        updated = (
            await conn.execute(
                update(orders)
                .where(orders.c.order_id == order["order_id"])
                .values(refunded_minor=refunded_total, updated_at=now)
                .returning(*orders.c)
            )
        ).one()
        order = dict(updated._mapping)
        data = OrderRefunded(
            # external_id: the refund's own id in the POS or shop, not the order's
            **{**_identity(order, occurred_at), "external_id": cmd.external_id},
            refund_id=refund["refund_id"],
            order_external_id=order["external_id"],
            currency=order["currency"],
            amount_minor=cmd.amount_minor,
            refunded_total_minor=refunded_total,
            paid_minor=order["paid_minor"],
            total_minor=order["total_minor"],
        )
        await emit(conn, "order.refunded", data, **_routing(order), time=occurred_at)
        if order["member_id"] is not None and refunded_total >= order["paid_minor"]:
            # refunded in full: a referral follows the order that qualified it (contract §5)
            await referrals.reopen_referral(
                conn, member_id=order["member_id"], order_id=order["order_id"]
            )
        return RefundOutcome(refund, order, created=True)


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


async def get_order(runtime: Runtime, order_id: str) -> dict[str, Any]:
    """The order with its refunds (by business time); 404 when there is none."""
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(select(orders).where(orders.c.order_id == order_id))).first()
        if row is None:
            raise NotFound(f"no order '{order_id}'")
        order = dict(row._mapping)
        found = await conn.execute(
            select(refunds)
            .where(refunds.c.order_id == order_id)
            .order_by(refunds.c.occurred_at, refunds.c.created_at, refunds.c.refund_id)
        )
        order["refunds"] = [dict(r._mapping) for r in found]
    return order


async def list_member_orders(
    runtime: Runtime, member_id: str, *, limit: int, cursor: str | None
) -> OrderPage:
    """A member's orders, newest business time first, `limit` at a time; 404 for a member that
    never existed (an erased member's orders are still listed)."""
    after = _decode_cursor(cursor) if cursor else None
    async with runtime.engine.connect() as conn:
        known = await conn.scalar(
            select(members.c.member_id).where(members.c.member_id == member_id)
        )
        if known is None:
            raise NotFound(f"no member '{member_id}'")
        query = select(orders).where(orders.c.member_id == member_id)
        if after is not None:
            at, order_id = after
            query = query.where(
                or_(
                    orders.c.occurred_at < at,
                    and_(orders.c.occurred_at == at, orders.c.order_id < order_id),
                )
            )
        query = query.order_by(orders.c.occurred_at.desc(), orders.c.order_id.desc())
        rows = [dict(r._mapping) for r in await conn.execute(query.limit(limit + 1))]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]["occurred_at"], rows[-1]["order_id"])
    return OrderPage(items=rows, next_cursor=next_cursor)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


async def _order_paid(
    conn: AsyncConnection,
    order: dict[str, Any],
    member: dict[str, Any] | None,
    *,
    now: datetime,
) -> None:
    """Emit `order.paid` for an order just marked paid (its member row locked by the caller,
    `member` as `_lock_member` read it), then let tiers and referrals react in the same
    transaction."""
    member_id = order["member_id"]
    paid_at = order["paid_at"]
    paid_order_count = None
    ladder = await tiers.load_ladder(conn) if order["member_tier"] else None
    if member_id is not None:
        # every order of the member that was ever paid, this one included: a later
        # cancellation does not make the next order a "first order" again
        paid_order_count = await conn.scalar(
            select(func.count())
            .select_from(orders)
            .where(orders.c.member_id == member_id, orders.c.paid_at.is_not(None))
        )
    data = OrderPaid(
        **{**_amounts(order), "occurred_at": paid_at},
        member_tier=order["member_tier"],
        member_tier_multiplier=(
            ladder.points_multiplier_of(order["member_tier"]) if ladder is not None else None
        ),
        paid_order_count=paid_order_count,
    )
    await emit(conn, "order.paid", data, **_routing(order), time=paid_at)
    if member_id is None or member is None:
        return
    assert ladder is not None  # a member's paid order records the member's tier
    await tiers.upgrade_after_paid_order(
        conn,
        member_id=member_id,
        current=member["tier"],
        order_id=order["order_id"],
        occurred_at=paid_at,
        now=now,
        ladder=ladder,
    )
    if member["referral_open"]:
        await referrals.qualify_referral(
            conn, member_id=member_id, order_id=order["order_id"], occurred_at=paid_at
        )


async def _resolve_member(
    conn: AsyncConnection, cmd: PlaceOrder, *, now: datetime
) -> dict[str, Any] | None:
    """The buyer, locked: by member_id, else phone, else card_no. None: a guest order."""
    if cmd.member_id is not None:
        member = await _lock_member(conn, members.c.member_id == cmd.member_id)
        if member is None:
            raise Unprocessable(UNKNOWN_MEMBER, f"no member '{cmd.member_id}'", field="member_id")
        return member
    if cmd.phone is not None:
        try:
            phone = normalise_phone(cmd.phone)
        except InvalidPhone as exc:
            raise Unprocessable("invalid_phone", str(exc)) from exc
        member = await _lock_member(conn, members.c.phone == phone)
        if member is not None or not cmd.enroll_if_unknown:
            return member  # an unknown phone without enrolment: a guest order
        try:
            async with conn.begin_nested():
                enrolled = await register_member_in(
                    conn,
                    RegisterMember(phone=phone, store_id=cmd.store_id, channel=cmd.channel),
                    now=now,
                )
        except ProblemError as exc:
            if exc.code != "member_exists":
                raise
            # enrolled a moment ago by a concurrent request: buy as that member
            member = await _lock_member(conn, members.c.phone == phone)
            if member is None:
                raise
            return member
        return {
            "member_id": enrolled["member_id"],
            "tier": enrolled["tier"],
            "referral_open": False,
        }
    if cmd.card_no is not None:
        card_no = cmd.card_no.strip()
        holder = await cards.member_id_by_card_no(conn, card_no)  # sign-up or bound card
        member = await _lock_member(conn, members.c.member_id == holder) if holder else None
        if member is None:
            raise Unprocessable(
                UNKNOWN_MEMBER, f"no member holds card '{card_no}'", field="card_no"
            )
        return member
    return None


async def _lock_member(
    conn: AsyncConnection, where: Any, *, include_erased: bool = False
) -> dict[str, Any] | None:
    """The member `where` selects, locked for this transaction; None when there is none, or
    when the member was erased (an erased member places no new orders) unless include_erased.
    `referral_open`: someone referred the member and no paid order qualifies it (none has yet,
    or the one that did was cancelled or refunded in full since)."""
    row = (
        await conn.execute(
            select(
                members.c.member_id,
                members.c.tier,
                members.c.erased_at,
                members.c.referred_by,
                members.c.referral_qualified_at,
            )
            .where(where)
            .with_for_update()
        )
    ).first()
    if row is None or (row.erased_at is not None and not include_erased):
        return None
    return {
        "member_id": row.member_id,
        "tier": row.tier,
        "referral_open": row.referred_by is not None and row.referral_qualified_at is None,
    }


async def _lock_order(conn: AsyncConnection, order_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(select(orders).where(orders.c.order_id == order_id).with_for_update())
    ).first()
    if row is None:
        raise NotFound(f"no order '{order_id}'")
    return dict(row._mapping)


async def _order_by_external_id(
    conn: AsyncConnection, channel: str, external_id: str
) -> dict[str, Any] | None:
    row: Row[Any] | None = (
        await conn.execute(
            select(orders).where(orders.c.channel == channel, orders.c.external_id == external_id)
        )
    ).first()
    return dict(row._mapping) if row else None


def _identity(order: Mapping[str, Any], occurred_at: datetime) -> dict[str, Any]:
    """The fields every order event carries."""
    return {
        "order_id": order["order_id"],
        "channel": order["channel"],
        "external_id": order["external_id"],
        "store_id": order["store_id"],
        "member_id": order["member_id"],
        "occurred_at": occurred_at,
    }


def _amounts(order: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **_identity(order, order["occurred_at"]),
        "currency": order["currency"],
        "total_minor": order["total_minor"],
        "paid_minor": order["paid_minor"],
        "lines": [OrderLine(**line) for line in order["lines"]],
        "coupon_codes": list(order["coupon_codes"]),
    }


def _routing(order: Mapping[str, Any]) -> dict[str, Any]:
    """Events of a member's order are keyed (and subjected) by the member; a guest order's by
    the order itself, so each order's events stay in order on one partition."""
    if order["member_id"] is not None:
        return {"subject": order["member_id"]}
    return {"subject": None, "key": order["order_id"]}


def _business_time(occurred_at: datetime | None, now: datetime) -> datetime:
    try:
        return rules.business_time(occurred_at, now)
    except rules.OrderRuleViolation as exc:
        raise _problem(exc, ["body", "occurred_at"]) from exc


def _problem(exc: rules.OrderRuleViolation, loc: list[str]) -> ProblemError:
    if isinstance(exc, rules.InvalidStatusTransition):
        return Conflict(exc.code, str(exc), order_status=exc.current, allowed=exc.allowed)
    if isinstance(exc, rules.OrderNotRefundable):
        return Conflict(exc.code, str(exc))
    if isinstance(exc, rules.RefundExceedsPaid):
        return Unprocessable(
            exc.code,
            str(exc),
            paid_minor=exc.paid_minor,
            refunded_total_minor=exc.refunded_minor,
            refundable_minor=exc.refundable_minor,
        )
    return Unprocessable(
        "validation_error", str(exc), errors=[{"loc": loc, "msg": str(exc), "type": "value_error"}]
    )


def _encode_cursor(occurred_at: datetime, order_id: str) -> str:
    return encode_cursor(occurred_at.isoformat(), order_id)


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    at, order_id = decode_cursor(cursor, 2)
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        raise invalid_cursor() from None
    if when.tzinfo is None or not order_id:
        raise invalid_cursor()
    return when, order_id
