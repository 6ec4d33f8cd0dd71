"""The lot-based ledger in memory: FIFO by expiry, portions, debts, and balances that always
equal what the entries add up to."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty_points.domain.ledger import Account, InsufficientPoints, Source

T0 = datetime(2026, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365)


class Ids:
    def __init__(self) -> None:
        self._n = itertools.count(1)

    def __call__(self) -> str:
        return f"id{next(self._n):05d}"


def check_invariants(account: Account, all_entries: list) -> None:
    available = sum(e.points for e in all_entries if e.bucket == "available")
    pending = sum(e.points for e in all_entries if e.bucket == "pending")
    released = sum(e.points for e in all_entries if e.kind == "release")
    assert account.available == available
    assert account.pending == pending - released
    open_available = sum(lot.remaining for lot in account.lots.values() if lot.state == "available")
    open_pending = sum(lot.remaining for lot in account.lots.values() if lot.state == "pending")
    assert open_pending == account.pending
    assert open_available == max(account.available, 0)
    assert all(lot.remaining >= 0 for lot in account.lots.values())


def earn(
    account: Account, ids: Ids, points: int, *, at: datetime, pending_until=None, expires_at=None
):
    return account.earn(
        points,
        lot_id=ids(),
        entry_id=ids(),
        rule="purchase",
        reason="test",
        source=Source(event_id=ids()),
        occurred_at=at,
        now=at,
        available_at=pending_until or at,
        expires_at=expires_at or at + YEAR,
    )


def test_redemptions_take_the_lots_that_expire_first():
    account, ids = Account("m"), Ids()
    late = earn(account, ids, 100, at=T0, expires_at=T0 + 2 * YEAR)
    early = earn(account, ids, 50, at=T0, expires_at=T0 + YEAR)
    entry = account.redeem(70, entry_id=ids(), reason="gift", source=Source(), now=T0)
    taken = {(p.lot_id, p.points) for p in account.portions if p.entry_id == entry.entry_id}
    assert taken == {(early.lot_id, 50), (late.lot_id, 20)}
    assert account.available == 80 and account.lifetime_redeemed == 70


def test_a_cancelled_redemption_gives_points_back_to_their_lots():
    account, ids = Account("m"), Ids()
    lot_a = earn(account, ids, 30, at=T0, expires_at=T0 + YEAR).lot_id
    lot_b = earn(account, ids, 30, at=T0, expires_at=T0 + 2 * YEAR).lot_id
    entry = account.redeem(40, entry_id=ids(), reason="gift", source=Source(), now=T0)
    taken = [p for p in account.portions if p.entry_id == entry.entry_id]
    account.cancel_redemption(taken, entry_id=ids(), source=Source(), now=T0, new_id=ids)
    assert account.lots[lot_a].remaining == 30 and account.lots[lot_b].remaining == 30
    assert account.available == 60 and account.lifetime_redeemed == 0


def test_redeeming_more_than_available_changes_nothing():
    account, ids = Account("m"), Ids()
    earn(account, ids, 10, at=T0)
    with pytest.raises(InsufficientPoints):
        account.redeem(11, entry_id=ids(), reason="x", source=Source(), now=T0)
    assert account.available == 10 and len(account.entries) == 1


def test_pending_points_are_not_available_until_released():
    account, ids = Account("m"), Ids()
    entry = earn(account, ids, 40, at=T0, pending_until=T0 + timedelta(days=7))
    assert (account.available, account.pending) == (0, 40)
    with pytest.raises(InsufficientPoints):
        account.redeem(1, entry_id=ids(), reason="x", source=Source(), now=T0)
    account.release(entry.lot_id, entry_id=ids(), now=T0 + timedelta(days=7))
    assert (account.available, account.pending) == (40, 0)


def test_a_reversal_takes_the_orders_lot_first_then_available_then_leaves_a_debt():
    account, ids = Account("m"), Ids()
    other = earn(account, ids, 30, at=T0)
    order = earn(account, ids, 50, at=T0)
    account.redeem(45, entry_id=ids(), reason="gift", source=Source(), now=T0)
    # FIFO (same expiry, earlier earned first): 30 from `other`, 15 from the order's lot.
    assert account.lots[other.lot_id].remaining == 0
    assert account.lots[order.lot_id].remaining == 35
    account.reverse_earning(
        50,
        order_lot_id=order.lot_id,
        entry_ids=ids,
        reason="refund",
        rule="purchase",
        source=Source(),
        now=T0,
    )
    assert account.lots[order.lot_id].remaining == 0
    assert account.available == -15  # 15 could not be taken back
    with pytest.raises(InsufficientPoints):
        account.redeem(1, entry_id=ids(), reason="x", source=Source(), now=T0)
    # Later earnings repay the debt first.
    new = earn(account, ids, 20, at=T0)
    assert account.available == 5 and account.lots[new.lot_id].remaining == 5


def test_expiry_after_a_partial_redemption_expires_only_what_is_left():
    account, ids = Account("m"), Ids()
    lot = earn(account, ids, 100, at=T0).lot_id
    account.redeem(60, entry_id=ids(), reason="gift", source=Source(), now=T0)
    entry = account.expire(lot, entry_id=ids(), now=T0 + YEAR)
    assert entry is not None and entry.points == -40
    assert account.available == 0
    assert account.expire(lot, entry_id=ids(), now=T0 + YEAR) is None


def test_a_deduction_cannot_overdraw():
    account, ids = Account("m"), Ids()
    earn(account, ids, 10, at=T0)
    with pytest.raises(InsufficientPoints):
        account.adjust(
            -11,
            entry_id=ids(),
            reason="x",
            source=Source(),
            now=T0,
            lot_id=ids(),
            expires_at=T0 + YEAR,
        )
    account.adjust(
        -10, entry_id=ids(), reason="x", source=Source(), now=T0, lot_id=ids(), expires_at=T0 + YEAR
    )
    assert account.available == 0


operations = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "earn",
                "earn_pending",
                "redeem",
                "cancel",
                "reverse",
                "expire",
                "release",
                "grant",
                "deduct",
                "expire_due",
            ]
        ),
        st.integers(min_value=1, max_value=300),
        st.integers(min_value=0, max_value=20),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_balances_always_equal_the_sum_of_the_entries(ops):
    account, ids = Account("m"), Ids()
    entries = []
    redemptions = []
    now = T0
    for name, points, pick in ops:
        now += timedelta(hours=pick)
        before = len(account.entries)
        try:
            if name == "earn":
                earn(account, ids, points, at=now, expires_at=now + timedelta(days=pick * 10 + 1))
            elif name == "earn_pending":
                earn(account, ids, points, at=now, pending_until=now + timedelta(days=7))
            elif name == "redeem":
                entry = account.redeem(points, entry_id=ids(), reason="r", source=Source(), now=now)
                redemptions.append([p for p in account.portions if p.entry_id == entry.entry_id])
            elif name == "cancel" and redemptions:
                taken = redemptions.pop(pick % len(redemptions))
                account.cancel_redemption(
                    taken, entry_id=ids(), source=Source(), now=now, new_id=ids
                )
            elif name == "reverse" and account.lots:
                lot_id = sorted(account.lots)[pick % len(account.lots)]
                account.reverse_earning(
                    points,
                    order_lot_id=lot_id,
                    entry_ids=ids,
                    reason="x",
                    rule="purchase",
                    source=Source(),
                    now=now,
                )
            elif name == "expire" and account.lots:
                account.expire(
                    sorted(account.lots)[pick % len(account.lots)], entry_id=ids(), now=now
                )
            elif name == "expire_due":
                account.expire_due(now, ids)
            elif name == "release" and account.lots:
                account.release(
                    sorted(account.lots)[pick % len(account.lots)], entry_id=ids(), now=now
                )
            elif name in ("grant", "deduct"):
                account.adjust(
                    points if name == "grant" else -points,
                    entry_id=ids(),
                    reason="x",
                    source=Source(),
                    now=now,
                    lot_id=ids(),
                    expires_at=now + YEAR,
                )
        except InsufficientPoints:
            assert len(account.entries) == before  # a refused change leaves no trace
        entries = account.entries
        check_invariants(account, entries)
    assert account.lifetime_redeemed >= 0
