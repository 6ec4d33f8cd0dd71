"""Buying a coupon with points: debit through the points service, then issue; if the coupon
cannot be issued, the points redemption is cancelled (now, or by `exchange-reconcile`).

The points call carries an Idempotency-Key derived from the exchange, and the exchange id is
derived from the caller's own Idempotency-Key: a retry after a timeout or a 503 replays the
same debit instead of taking the points twice.

The exchange row is a state machine (`domain/exchanges.py`). A late retry and the reconcile job
may take up the same exchange at once, so every change of state is one guarded
`UPDATE exchanges SET status = :to ... WHERE exchange_id = :id AND status = :from RETURNING`,
and each acts (issues the coupon, gives the points back, answers) only when its UPDATE won;
the loser reads the state the winner reached and answers, or counts, from it. The steps taken
before a call to the points service commit on their own (`Runtime.committed`), so that the call is
never made for an exchange the database does not know, nor while a lock on its row is held.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime
from typing import Any

import structlog
from loyalty_shared.errors import NotFound, ProblemError, Unprocessable
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.service import Runtime
from sqlalchemy import ColumnElement, Row, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.neighbours import NeighbourRefused, NeighbourUnavailable, neighbours_of
from ..adapters.store import CouponRow, load_held, load_templates, lock_members
from ..adapters.tables import exchanges
from ..domain.campaigns import Allocator, NewCoupon
from ..domain.exchanges import (
    RECONCILE_AFTER,
    RECONCILED,
    ExchangeStatus,
    check_move,
    decided,
    points_refund,
)
from .issuing import write_coupons
from .wallet import get_coupon

log = structlog.get_logger(__name__)

# Refusals of issuing and the problems they answer.
_REFUSALS = {
    "out_of_stock": (409, "the template's stock is used up"),
    "member_limit_reached": (422, "the member holds as many of these coupons as allowed"),
    "template_window_closed": (422, "the template's validity window has closed"),
}


def exchange_id_for(
    principal: str, idempotency_key: str | None, member_id: str, template: str
) -> str:
    if not idempotency_key:
        return monotonic_ulid()
    raw = f"{principal}\x00{idempotency_key}\x00{member_id}\x00{template}".encode()
    return "x" + hashlib.sha256(raw).hexdigest()[:40]


async def _allocator(conn: Any, member_id: str, template_code: str) -> Allocator:
    loaded = await load_templates(conn, [template_code], for_update=True)
    return Allocator(
        campaigns={},
        templates={c: lt.template for c, lt in loaded.items()},
        stock_left={c: lt.stock_left for c, lt in loaded.items()},
        held=await load_held(conn, [member_id], [template_code]),
        granted=set(),
    )


# ---------------------------------------------------------------------------------------------
# The exchange row: guarded transitions
# ---------------------------------------------------------------------------------------------

PENDING = ExchangeStatus.PENDING
ISSUED = ExchangeStatus.ISSUED
FAILED = ExchangeStatus.FAILED
REFUNDING = ExchangeStatus.REFUNDING
REFUND_PENDING = ExchangeStatus.REFUND_PENDING
REFUNDED = ExchangeStatus.REFUNDED


async def _move(
    conn: AsyncConnection,
    exchange_id: str,
    from_: ExchangeStatus,
    to: ExchangeStatus,
    *,
    now: datetime,
    where: tuple[ColumnElement[bool], ...] = (),
    **values: Any,
) -> Row[Any] | None:
    """`UPDATE exchanges SET status = :to ... WHERE exchange_id = :id AND status = :from
    RETURNING *`: the exchange as it now is if this transition won, None if the exchange was not
    (any longer) in `from_` (or failed the extra `where`)."""
    check_move(from_, to)
    result = await conn.execute(
        update(exchanges)
        .where(exchanges.c.exchange_id == exchange_id, exchanges.c.status == from_.value, *where)
        .values(status=to.value, updated_at=now, **values)
        .returning(*exchanges.c)
    )
    return result.first()


async def _read(conn: AsyncConnection, exchange_id: str) -> Row[Any]:
    return (
        await conn.execute(select(exchanges).where(exchanges.c.exchange_id == exchange_id))
    ).one()


async def _find(runtime: Runtime, exchange_id: str) -> Row[Any] | None:
    async with runtime.reading() as conn:
        return (
            await conn.execute(select(exchanges).where(exchanges.c.exchange_id == exchange_id))
        ).first()


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Lost(Exception):
    """The exchange left `pending` (the reconcile job settled it) while this request worked."""


# ---------------------------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------------------------


async def exchange(
    runtime: Runtime,
    *,
    member_id: str,
    template_code: str,
    principal: str,
    idempotency_key: str | None,
) -> dict[str, Any]:
    exchange_id = exchange_id_for(principal, idempotency_key, member_id, template_code)
    if idempotency_key:  # a retry of an exchange already decided answers what it came to
        known = await _find(runtime, exchange_id)
        if known is not None and decided(known.status):
            return await _answer_from(runtime, known)

    now = runtime.clock.now()
    async with runtime.engine.connect() as conn:
        loaded = (await load_templates(conn, [template_code])).get(template_code)
        if loaded is None:
            raise NotFound(f"no coupon template '{template_code}'")
        template = loaded.template
        if template.points_cost is None:
            raise Unprocessable(
                "not_exchangeable", f"the template '{template_code}' has no points price"
            )
        # Refuse before charging what would be refused after it.
        allocator = Allocator(
            campaigns={},
            templates={template_code: template},
            stock_left={template_code: loaded.stock_left},
            held=await load_held(conn, [member_id], [template_code]),
            granted=set(),
        )
        refusal = allocator.refusal_for_member(template, member_id, now)
    if refusal is not None:
        status, detail = _REFUSALS[refusal]
        raise ProblemError(status, refusal, detail, points_taken=False)

    # The pending row is on disk before any point moves: whatever happens next, a retry or the
    # reconcile job finds the exchange. A retry takes it up again (pending → pending), which
    # tells the job that someone is on it.
    async with runtime.committed() as conn:
        row: Row[Any] | None = (
            await conn.execute(
                insert(exchanges)
                .values(
                    exchange_id=exchange_id,
                    member_id=member_id,
                    template_code=template_code,
                    points=template.points_cost,
                    status=PENDING.value,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
                .returning(*exchanges.c)
            )
        ).first()
        if row is None:  # a retry
            row = await _move(conn, exchange_id, PENDING, PENDING, now=now)
        settled = None if row is not None else await _read(conn, exchange_id)
    if settled is not None:
        return await _answer_from(runtime, settled)
    assert row is not None
    points_cost = int(row.points)  # the price agreed on the first attempt: the debit replays it

    try:
        async with neighbours_of(runtime).points(runtime) as points:
            debit = await points.redeem(
                member_id=member_id,
                points=points_cost,
                reason=f"coupon {template_code}",
                idempotency_key=f"coupon-exchange:{exchange_id}",
            )
    except NeighbourUnavailable as exc:
        settled = await _still_pending(runtime, exchange_id, f"points unavailable: {exc}")
        if settled is not None:
            return await _answer_from(runtime, settled)
        raise ProblemError(
            503,
            "points_unavailable",
            "the points service is unavailable; no coupon was issued. Retry later with the "
            "same Idempotency-Key: points are never taken twice",
        ) from exc
    except NeighbourRefused as exc:
        async with runtime.committed() as conn:
            failed = await _move(
                conn, exchange_id, PENDING, FAILED, now=runtime.clock.now(), reason=str(exc)
            )
            settled = None if failed is not None else await _read(conn, exchange_id)
        if settled is not None:
            return await _answer_from(runtime, settled)
        if exc.code == "insufficient_points":
            raise Unprocessable(
                "insufficient_points",
                f"{points_cost} points needed: {exc.body.get('detail')}",
                available=exc.body.get("available"),
                points_cost=points_cost,
            ) from exc
        raise ProblemError(
            502, "points_refused", f"the points service refused the debit: {exc}"
        ) from exc

    redemption_id = str(debit["redemption_id"])
    try:
        issued = await _issue(runtime, exchange_id, member_id, template_code, redemption_id)
    except _Lost:
        return await _answer_from(runtime, await _read_now(runtime, exchange_id))
    except _Refused as refused:
        return await _refuse_and_give_back(runtime, exchange_id, redemption_id, refused.reason)
    except Exception:
        try:
            await _give_back_pending(runtime, exchange_id, redemption_id, "issue_failed")
        except Exception as exc:  # the job gives them back once the database is back
            log.warning("exchange_refund_deferred", exchange_id=exchange_id, error=repr(exc))
        raise
    return await _answer(runtime, issued)


async def _still_pending(runtime: Runtime, exchange_id: str, reason: str) -> Row[Any] | None:
    """Note why the exchange is still pending; or, if meanwhile it was decided, the row."""
    async with runtime.committed() as conn:
        noted = await _move(
            conn, exchange_id, PENDING, PENDING, now=runtime.clock.now(), reason=reason
        )
        return None if noted is not None else await _read(conn, exchange_id)


async def _read_now(runtime: Runtime, exchange_id: str) -> Row[Any]:
    async with runtime.engine.connect() as conn:
        return await _read(conn, exchange_id)


async def _issue(
    runtime: Runtime, exchange_id: str, member_id: str, template_code: str, redemption_id: str
) -> Row[Any]:
    """The coupon and `pending → issued` in one transaction: no coupon unless the transition won."""
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        await lock_members(conn, [member_id])
        allocator = await _allocator(conn, member_id, template_code)
        outcome = allocator.take_one(template_code, member_id, now)
        if not isinstance(outcome, NewCoupon):
            raise _Refused(outcome)
        template = allocator.templates[template_code]
        row = CouponRow(
            member_id=member_id,
            new=outcome,
            campaign_code=None,
            via="exchange",
            issued_at=now,
            exchange_id=exchange_id,
            points_cost=template.points_cost,
        )
        issued = await _move(
            conn,
            exchange_id,
            PENDING,
            ISSUED,
            now=now,
            points_redemption_id=redemption_id,
            reason=None,
        )
        if issued is None:
            raise _Lost  # rolls the transaction back: no coupon
        await write_coupons(conn, [row], allocator.templates, now)  # draws the coupon's code
        return (
            await conn.execute(
                update(exchanges)
                .where(exchanges.c.exchange_id == exchange_id)
                .values(coupon_code=row.coupon_code)
                .returning(*exchanges.c)
            )
        ).one()


async def _refuse_and_give_back(
    runtime: Runtime, exchange_id: str, redemption_id: str, reason: str
) -> dict[str, Any]:
    """The coupon cannot be issued after the debit: give the points back, answer the refusal."""
    claimed = await _give_back_pending(runtime, exchange_id, redemption_id, reason)
    if isinstance(claimed, Row):  # decided meanwhile (settled by the job, or issued by a retry)
        return await _answer_from(runtime, claimed)
    status, detail = _REFUSALS[reason]
    raise ProblemError(
        status,
        reason,
        detail + ("; the points were given back" if claimed else "; the points will be given back"),
        points_taken=False,
        points_refund="done" if claimed else "pending",
    )


async def _give_back_pending(
    runtime: Runtime, exchange_id: str, redemption_id: str, reason: str
) -> bool | Row[Any]:
    """Claim the refund of a pending exchange (`pending → refunding`) and make it: True given
    back, False left to the job; or the exchange's row if it was no longer pending."""
    async with runtime.committed() as conn:
        claimed = await _move(
            conn,
            exchange_id,
            PENDING,
            REFUNDING,
            now=runtime.clock.now(),
            reason=reason,
            points_redemption_id=redemption_id,
        )
        if claimed is None:
            return await _read(conn, exchange_id)
    return await _refund_claimed(runtime, exchange_id, redemption_id, reason)


async def _refund_claimed(
    runtime: Runtime, exchange_id: str, redemption_id: str, reason: str
) -> bool:
    """The refund of an exchange this caller moved to `refunding`: cancel the points
    redemption (its own Idempotency-Key: a second cancel gives nothing twice), then
    `refunding → refunded`, or `refunding → refund_pending` when the points service is down."""
    try:
        async with neighbours_of(runtime).points(runtime) as points:
            await points.cancel(
                redemption_id, idempotency_key=f"coupon-exchange-cancel:{exchange_id}"
            )
    except (NeighbourUnavailable, NeighbourRefused) as exc:
        log.warning("exchange_refund_pending", exchange_id=exchange_id, error=str(exc))
        async with runtime.committed() as conn:
            await _move(
                conn,
                exchange_id,
                REFUNDING,
                REFUND_PENDING,
                now=runtime.clock.now(),
                reason=reason,
                points_redemption_id=redemption_id,
            )
        return False
    async with runtime.committed() as conn:
        await _move(
            conn,
            exchange_id,
            REFUNDING,
            REFUNDED,
            now=runtime.clock.now(),
            reason=reason,
            points_redemption_id=redemption_id,
        )
    return True


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------


async def _answer(runtime: Runtime, row: Row[Any]) -> dict[str, Any]:
    coupon = await get_coupon(runtime, row.coupon_code)
    return {
        **coupon,
        "exchange_id": row.exchange_id,
        "points_cost": row.points,
        "points_redemption_id": row.points_redemption_id,
    }


async def _answer_from(runtime: Runtime, row: Row[Any]) -> dict[str, Any]:
    """The answer to the client of a decided exchange, whoever decided it: its coupon, or
    409 `exchange_settled` (the points given back, or on their way back, or never taken)."""
    status = ExchangeStatus(row.status)
    if status is ISSUED:
        return await _answer(runtime, row)
    if not decided(status):  # every caller lost a transition out of pending, never back into it
        raise RuntimeError(f"exchange {row.exchange_id} is still pending")
    refund_state = points_refund(status)
    if refund_state == "done":
        outcome = "the points were given back"
    elif refund_state == "pending":
        outcome = "the points are being given back"
    else:
        outcome = "no points were taken"
    raise ProblemError(
        409,
        "exchange_settled",
        f"this exchange ended {status.value} ({row.reason}) without a coupon: {outcome}; "
        "send a new Idempotency-Key to try again",
        exchange_id=row.exchange_id,
        points_taken=False,
        **({"points_refund": refund_state} if refund_state else {}),
    )


# ---------------------------------------------------------------------------------------------
# The reconcile job
# ---------------------------------------------------------------------------------------------


async def reconcile_exchanges(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    """The `exchange-reconcile` job: give back the points of exchanges whose coupon could not be
    issued while the points service was down, and settle exchanges left pending by a crash or a
    timeout (their debit is replayed by its key, then cancelled: nothing is lost either way).
    An exchange that a request settled first (its coupon issued, say) is counted as such and
    left alone."""
    cutoff = as_of - RECONCILE_AFTER
    async with runtime.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(exchanges).where(
                    (exchanges.c.status == REFUND_PENDING.value)
                    | (
                        exchanges.c.status.in_([PENDING.value, REFUNDING.value])
                        & (exchanges.c.updated_at < cutoff)
                    )
                )
            )
        ).all()
    counts: Counter[str] = Counter()
    for row in rows:
        counts[await settle_exchange(runtime, row, as_of)] += 1
    return {
        "exchanges_refunded": counts["refunded"],
        "exchanges_waiting": counts["waiting"],
        "exchanges_failed": counts["failed"],
        "exchanges_already_settled": counts["already_settled"],
    }


async def settle_exchange(runtime: Runtime, row: Row[Any], as_of: datetime) -> str:
    """Settle one exchange the job found (`row`, as it was read) by giving its points back:
    `refunded`, `waiting` (the points service is down; the next run tries again, or a request is
    working on it), `failed` (it was never debited) or `already_settled` (the job's claim lost:
    a request settled it first, and the job does nothing more)."""
    status = ExchangeStatus(row.status)
    if status not in RECONCILED:
        return "already_settled"
    guard: tuple[ColumnElement[bool], ...] = ()
    if status in (PENDING, REFUNDING):  # only once nobody has touched it for a while
        guard = (exchanges.c.updated_at < as_of - RECONCILE_AFTER,)
    if status is REFUNDING:  # a refund a crash left half-done: take it over, exactly as seen
        guard = (*guard, exchanges.c.updated_at == row.updated_at)
    async with runtime.committed() as conn:
        claimed = await _move(
            conn, row.exchange_id, status, REFUNDING, now=runtime.clock.now(), where=guard
        )
        now_is = None if claimed is not None else await _read(conn, row.exchange_id)
    if claimed is None:
        assert now_is is not None
        return "waiting" if now_is.status == PENDING.value else "already_settled"

    reason = claimed.reason or "abandoned"
    redemption_id = claimed.points_redemption_id
    if redemption_id is None:  # the debit may or may not have happened: replay it by its key
        try:
            async with neighbours_of(runtime).points(runtime) as points:
                debit = await points.redeem(
                    member_id=claimed.member_id,
                    points=int(claimed.points),
                    reason=f"coupon {claimed.template_code}",
                    idempotency_key=f"coupon-exchange:{claimed.exchange_id}",
                )
        except NeighbourRefused as exc:
            async with runtime.committed() as conn:
                await _move(
                    conn,
                    claimed.exchange_id,
                    REFUNDING,
                    FAILED,
                    now=runtime.clock.now(),
                    reason=f"never debited: {exc}",
                )
            return "failed"
        except NeighbourUnavailable:
            async with runtime.committed() as conn:
                await _move(
                    conn,
                    claimed.exchange_id,
                    REFUNDING,
                    REFUND_PENDING,
                    now=runtime.clock.now(),
                    reason=reason,
                )
            return "waiting"
        redemption_id = str(debit["redemption_id"])
    done = await _refund_claimed(runtime, claimed.exchange_id, redemption_id, reason)
    return "refunded" if done else "waiting"
