"""Buying a coupon with points: debit through the points service, then issue; if the coupon
cannot be issued, the points redemption is cancelled (now, or by `exchange-reconcile`).

The points call carries an Idempotency-Key derived from the exchange, and the exchange id is
derived from the caller's own Idempotency-Key: a retry after a timeout or a 503 replays the
same debit instead of taking the points twice.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import structlog
from loyalty_shared.errors import NotFound, ProblemError, Unprocessable
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.service import Runtime
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from ..adapters.neighbours import NeighbourRefused, NeighbourUnavailable, neighbours_of
from ..adapters.store import CouponRow, load_held, load_templates, lock_members
from ..adapters.tables import exchanges
from ..domain.campaigns import Allocator, NewCoupon
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


async def exchange(
    runtime: Runtime,
    *,
    member_id: str,
    template_code: str,
    principal: str,
    idempotency_key: str | None,
) -> dict[str, Any]:
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

    exchange_id = exchange_id_for(principal, idempotency_key, member_id, template_code)
    async with runtime.transaction() as conn:
        await conn.execute(
            insert(exchanges)
            .values(
                exchange_id=exchange_id,
                member_id=member_id,
                template_code=template_code,
                points=template.points_cost,
                status="pending",
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
        existing = (
            await conn.execute(select(exchanges).where(exchanges.c.exchange_id == exchange_id))
        ).one()
    if existing.status == "issued" and existing.coupon_code:
        return await _answer(runtime, existing.coupon_code, existing)
    if existing.status in ("refunded", "refund_pending", "failed"):
        raise ProblemError(
            409,
            "exchange_settled",
            f"this exchange ended {existing.status} ({existing.reason}); "
            "send a new Idempotency-Key to try again",
            exchange_id=exchange_id,
        )

    points_key = f"coupon-exchange:{exchange_id}"
    try:
        async with neighbours_of(runtime).points(runtime) as points:
            debit = await points.redeem(
                member_id=member_id,
                points=template.points_cost,
                reason=f"coupon {template_code}",
                idempotency_key=points_key,
            )
    except NeighbourUnavailable as exc:
        await _set(runtime, exchange_id, status="pending", reason=f"points unavailable: {exc}")
        raise ProblemError(
            503,
            "points_unavailable",
            "the points service is unavailable; no coupon was issued. Retry later with the "
            "same Idempotency-Key: points are never taken twice",
        ) from exc
    except NeighbourRefused as exc:
        await _set(runtime, exchange_id, status="failed", reason=str(exc))
        if exc.code == "insufficient_points":
            raise Unprocessable(
                "insufficient_points",
                f"{template.points_cost} points needed: {exc.body.get('detail')}",
                available=exc.body.get("available"),
                points_cost=template.points_cost,
            ) from exc
        raise ProblemError(
            502, "points_refused", f"the points service refused the debit: {exc}"
        ) from exc

    redemption_id = str(debit["redemption_id"])
    try:
        coupon_code = await _issue(runtime, exchange_id, member_id, template_code, redemption_id)
    except _Refused as refused:
        refunded = await refund(runtime, exchange_id, redemption_id, refused.reason)
        status, detail = _REFUSALS[refused.reason]
        raise ProblemError(
            status,
            refused.reason,
            detail
            + ("; the points were given back" if refunded else "; the points will be given back"),
            points_taken=False,
            points_refund="done" if refunded else "pending",
        ) from None
    except Exception:
        await refund(runtime, exchange_id, redemption_id, "issue_failed")
        raise
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(select(exchanges).where(exchanges.c.exchange_id == exchange_id))
        ).one()
    return await _answer(runtime, coupon_code, row)


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


async def _issue(
    runtime: Runtime, exchange_id: str, member_id: str, template_code: str, redemption_id: str
) -> str:
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
        await write_coupons(conn, [row], allocator.templates, now)
        await conn.execute(
            update(exchanges)
            .where(exchanges.c.exchange_id == exchange_id)
            .values(
                status="issued",
                coupon_code=row.coupon_code,
                points_redemption_id=redemption_id,
                reason=None,
                updated_at=now,
            )
        )
        return row.coupon_code


async def refund(runtime: Runtime, exchange_id: str, redemption_id: str, reason: str) -> bool:
    """Give the points back; if the points service is down, leave it to `exchange-reconcile`."""
    try:
        async with neighbours_of(runtime).points(runtime) as points:
            await points.cancel(
                redemption_id, idempotency_key=f"coupon-exchange-cancel:{exchange_id}"
            )
    except (NeighbourUnavailable, NeighbourRefused) as exc:
        log.warning("exchange_refund_pending", exchange_id=exchange_id, error=str(exc))
        await _set(
            runtime,
            exchange_id,
            status="refund_pending",
            reason=reason,
            points_redemption_id=redemption_id,
        )
        return False
    await _set(
        runtime, exchange_id, status="refunded", reason=reason, points_redemption_id=redemption_id
    )
    return True


async def _set(runtime: Runtime, exchange_id: str, **values: Any) -> None:
    async with runtime.transaction() as conn:
        await conn.execute(
            update(exchanges)
            .where(exchanges.c.exchange_id == exchange_id)
            .values(**values, updated_at=runtime.clock.now())
        )


async def _answer(runtime: Runtime, coupon_code: str, row: Any) -> dict[str, Any]:
    coupon = await get_coupon(runtime, coupon_code)
    return {
        **coupon,
        "exchange_id": row.exchange_id,
        "points_cost": row.points,
        "points_redemption_id": row.points_redemption_id,
    }


async def reconcile_exchanges(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    """The `exchange-reconcile` job: give back the points of exchanges whose coupon could not be
    issued while the points service was down, and settle exchanges left pending by a crash or a
    timeout (their debit is replayed by its key, then cancelled: nothing is lost either way)."""
    async with runtime.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(exchanges).where(
                    (exchanges.c.status == "refund_pending")
                    | (
                        (exchanges.c.status == "pending")
                        & (exchanges.c.updated_at < as_of - timedelta(minutes=10))
                    )
                )
            )
        ).all()
    refunded = waiting = 0
    for row in rows:
        redemption_id = row.points_redemption_id
        if redemption_id is None:
            try:
                async with neighbours_of(runtime).points(runtime) as points:
                    debit = await points.redeem(
                        member_id=row.member_id,
                        points=row.points,
                        reason=f"coupon {row.template_code}",
                        idempotency_key=f"coupon-exchange:{row.exchange_id}",
                    )
                redemption_id = str(debit["redemption_id"])
            except NeighbourRefused:
                await _set(runtime, row.exchange_id, status="failed", reason="never debited")
                continue
            except NeighbourUnavailable:
                waiting += 1
                continue
        if await refund(runtime, row.exchange_id, redemption_id, row.reason or "abandoned"):
            refunded += 1
        else:
            waiting += 1
    return {"exchanges_refunded": refunded, "exchanges_waiting": waiting}
