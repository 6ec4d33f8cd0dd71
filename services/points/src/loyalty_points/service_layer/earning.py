"""Applies member and order events to the ledger, a whole batch at a time.

For a batch: lock the accounts it touches, apply each event in order in memory by the rules in
force, then write lots, entries, portions, balances and `points.*` events together.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from loyalty_shared.events import Event
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.kafka import Handlers
from loyalty_shared.service import Runtime
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.ledger_store import LedgerBatch, load_rulebook, save_rule
from ..domain.earning import Card, Earnings, ReferralBonus, takes_back_everything
from ..domain.ledger import Source
from ..domain.rules import Rule, TierMultiplierParams, local_date
from .ledger_events import publish_operations

# Events that name a member whose ledger they change or whose profile they update.
ORDER_TYPES = ("order.paid", "order.refunded", "order.cancelled")
TAKING_BACK = ("order.refunded", "order.cancelled")
MEMBER_TYPES = (
    "member.registered",
    "member.updated",
    "member.erased",
    "member.tier_changed",
    "member.card_issued",
    "member.checked_in",
    "member.referral_qualified",
    "member.tier_ladder_changed",  # about no member: the ladder as the member service set it
)


def _member_of(event: Event[Any]) -> str | None:
    return getattr(event.data, "member_id", None)


def _source(event: Event[Any], order_id: str | None = None) -> Source:
    return Source(event_id=event.id, type=event.type, order_id=order_id)


async def apply_batch(runtime: Runtime, conn: AsyncConnection, events: list[Event[Any]]) -> None:
    """The consumer's handler: apply, then write everything and the points.* events."""
    batch = await apply_in_memory(conn, events, runtime.clock.now())
    await publish_operations(conn, batch)
    await batch.flush()


async def apply_in_memory(
    conn: AsyncConnection, events: list[Event[Any]], now: datetime
) -> LedgerBatch:
    """Lock the accounts the events touch and apply the events to them in memory, in order.
    Nothing is written yet: the consumer writes it, a simulation rolls it back."""
    rulebook = await load_rulebook(conn)
    earnings = Earnings(rulebook, monotonic_ulid, now)
    batch = LedgerBatch(conn, now)
    relevant = [e for e in events if _member_of(e)]
    taking_back = [e for e in relevant if e.type in TAKING_BACK]
    # referral bonuses that follow the orders this batch takes back: their referrers too
    referrers = await batch.load_referrals(e.data.order_id for e in taking_back)
    if taking_back:
        referrers |= {e.data.member_id for e in relevant if e.type == "member.referral_qualified"}
    # earning adds lots; only refunds and cancellations take points back from existing ones
    await batch.load(
        [*(_member_of(e) for e in relevant), *referrers],  # type: ignore[list-item]
        lots_of=[*(_member_of(e) for e in taking_back), *referrers],  # type: ignore[list-item]
    )
    await batch.load_orders(
        e.data.order_id
        for e in relevant
        if e.type in ORDER_TYPES or e.type == "member.referral_qualified"
    )
    days = set()
    for e in relevant:
        member = batch.members[_member_of(e)]  # type: ignore[index]
        when = getattr(e.data, "occurred_at", None) or e.time
        days.add((member.member_id, local_date(when, member.timezone)))
    await batch.load_days(days)

    tiers_learnt: dict[str, float] = {}
    for event in relevant:
        member_id: str = _member_of(event)  # type: ignore[assignment]
        account, member = batch.accounts[member_id], batch.members[member_id]
        data = event.data
        if event.type == "member.registered":
            member.timezone = data.timezone
            member.tier = member.tier or data.tier
            batch.member_changed(member_id)
            earnings.signup(
                account, member, source=_source(event), registered_at=data.registered_at
            )
        elif event.type == "member.updated":
            if data.timezone:
                member.timezone = data.timezone
                batch.member_changed(member_id)
        elif event.type == "member.erased":
            member.erased_at = member.erased_at or data.occurred_at
            batch.member_changed(member_id)
        elif event.type == "member.tier_changed":
            member.tier = data.new_tier
            tiers_learnt[data.new_tier] = data.points_multiplier
            batch.member_changed(member_id)
        elif event.type == "member.card_issued":
            # A tier card's multiplier is the tier's own, which the tier rule applies already:
            # counting it again as a card benefit would pay the tier twice.
            multiplier = data.benefits.points_multiplier if data.benefits else 1.0
            if data.plan_kind == "tier":
                multiplier = 1.0
            member.add_card(data.card_no, Card(multiplier, data.expires_at, data.valid_from))
            batch.member_changed(member_id)
        elif event.type == "member.checked_in":
            earnings.checkin(
                account,
                member,
                source=_source(event),
                streak_days=data.streak_days,
                occurred_at=data.occurred_at,
            )
        elif event.type == "member.referral_qualified":
            referred_order = batch.orders.get(data.order_id)
            if referred_order is not None and takes_back_everything(
                cancelled=referred_order.cancelled,
                paid_minor=referred_order.paid_minor,
                refunded_minor=referred_order.refunded_minor,
            ):
                continue  # the order it follows no longer counts: no bonus (contract §5)
            entry = earnings.referral(
                account, member, source=_source(event, data.order_id), occurred_at=data.occurred_at
            )
            if entry is not None and entry.lot_id is not None:
                batch.add_referral(
                    ReferralBonus(
                        entry.lot_id,
                        data.order_id,
                        member_id,
                        data.referred_member_id,
                        entry.points,
                    )
                )
        elif event.type == "order.paid":
            if data.order_id in batch.orders:
                continue  # the same order paid twice (a new event id): it earned already
            tier = data.member_tier or member.tier
            multiplier = data.member_tier_multiplier
            if multiplier is None and tier in tiers_learnt:
                multiplier = tiers_learnt[tier]
            batch.orders[data.order_id] = earnings.order_paid(
                account,
                member,
                source=_source(event, data.order_id),
                order_id=data.order_id,
                paid_minor=data.paid_minor,
                occurred_at=data.occurred_at,
                tier=tier,
                tier_multiplier=multiplier,
            )
        elif event.type in TAKING_BACK:
            cancelled = event.type == "order.cancelled"
            what = "cancelled" if cancelled else "refunded"
            if takes_back_everything(
                cancelled=cancelled,
                paid_minor=data.paid_minor,
                refunded_minor=0 if cancelled else data.refunded_total_minor,
            ):
                for bonus in batch.referrals.get(data.order_id, []):
                    earnings.reverse_referral(
                        batch.accounts[bonus.referrer_id],
                        bonus,
                        source=_source(event, data.order_id),
                        reason=f"referred order {data.order_id} {what}",
                    )
            order = batch.orders.get(data.order_id)
            if order is None:
                continue  # never earned (paid before the points service knew the member)
            if cancelled:
                order.cancelled = True
            else:
                order.refunded_minor = max(order.refunded_minor, data.refunded_total_minor)
            earnings.settle_order(
                account,
                order,
                source=_source(event, data.order_id),
                reason=f"order {data.order_id} {what}",
            )
    ladders = [e.data for e in events if e.type == "member.tier_ladder_changed"]
    if tiers_learnt or ladders:
        ladder = {t.code: t.points_multiplier for t in ladders[-1].tiers} if ladders else None
        await _learn_tier_multipliers(
            conn, rulebook.rules["tier_multiplier"], tiers_learnt, ladder, now
        )
    return batch


async def _learn_tier_multipliers(
    conn: AsyncConnection,
    rule: Rule,
    learnt: dict[str, float],
    ladder: dict[str, float] | None,
    now: Any,
) -> None:
    """The member service owns the ladder: `member.tier_ladder_changed` carries it whole and
    replaces what the rule knew (contract §5: the rules show the ladder as it stands now). A
    `member.tier_changed` only teaches a tier the rule does not know yet: its multiplier is the
    ladder's at the time of the change, which a later ladder may have replaced."""
    known = dict(rule.params.multipliers)
    wanted = dict(ladder) if ladder is not None else dict(known)
    for tier, multiplier in learnt.items():
        wanted.setdefault(tier, multiplier)
    if wanted == known:
        return
    await save_rule(
        conn, Rule(rule.code, rule.enabled, TierMultiplierParams(multipliers=wanted)), now
    )


def handlers(runtime: Runtime) -> Handlers:
    table = Handlers()
    table.on_each(MEMBER_TYPES + ORDER_TYPES, partial(apply_batch, runtime))
    return table
