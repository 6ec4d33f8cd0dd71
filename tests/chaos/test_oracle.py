"""The edges oracle (`oracle_edges.Book`) on small cases computed by hand from contract §4-§5 and
the points README, and the edges stream's own claims (every edge exercised; any delivery of it
leaves the oracle where the clean one does). Pure Python: no database, no broker, no service.
So a difference `test_edges.py` reports is the service's, not the oracle's."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

import pytest

from .edges_stream import (
    MEMBERS,
    SEED,
    Cancel,
    Check,
    Publish,
    Redeem,
    RunJob,
    build,
    missing_edges,
    with_duplicates,
)
from .oracle_edges import Ambiguous, Book, EdgeFact, Redemption, Refused

T = datetime(2031, 3, 23, tzinfo=UTC)
_n = 0


def _id() -> str:
    global _n
    _n += 1
    return f"t{_n:05d}"


def signup(book: Book, member: str, at: datetime, tz: str = "Asia/Shanghai", now=T) -> str:
    fact = EdgeFact(_id(), "signup", member, at, timezone=tz)
    book.apply(fact, now)
    return fact.event_id


def paid(
    book: Book,
    member: str,
    order: str,
    at: datetime,
    paid_minor: int,
    tier: str = "bronze",
    multiplier: str = "1.0",
    now: datetime = T,
) -> str:
    fact = EdgeFact(
        _id(),
        "paid",
        member,
        at,
        order_id=order,
        total_minor=paid_minor,
        paid_minor=paid_minor,
        tier=tier,
        multiplier=multiplier,
    )
    book.apply(fact, now)
    return fact.event_id


def refund(book: Book, member: str, order: str, total: int, paid_minor: int, at, now=T) -> str:
    fact = EdgeFact(
        _id(),
        "refund",
        member,
        at,
        order_id=order,
        paid_minor=paid_minor,
        total_minor=paid_minor,
        refunded_total_minor=total,
        amount_minor=total,
    )
    book.apply(fact, now)
    return fact.event_id


def cancel(book: Book, member: str, order: str, at: datetime, now=T) -> str:
    fact = EdgeFact(_id(), "cancel", member, at, order_id=order)
    book.apply(fact, now)
    return fact.event_id


def card(book, member, valid_from, expires_at, multiplier, now=T) -> None:
    book.apply(
        EdgeFact(
            _id(),
            "card",
            member,
            valid_from,
            plan_kind="paid",
            valid_from=valid_from,
            expires_at=expires_at,
            multiplier=multiplier,
        ),
        now,
    )


def referral(book, referrer, referred, order, at, now=T) -> str:
    fact = EdgeFact(_id(), "referral", referrer, at, order_id=order, referred_member_id=referred)
    book.apply(fact, now)
    return fact.event_id


def test_the_factors_multiply_as_exact_decimals_by_the_members_own_day():
    """12345 minor: base 123. At 2031-03-19T15:30Z it is the 20th 00:30 in Tokyo, but 23:30 on
    the 19th in Shanghai. Silver 1.2, a card of 1.5 valid since the day before."""
    at = datetime(2031, 3, 19, 15, 30, tzinfo=UTC)
    book = Book()
    for member, tz in (("tokyo", "Asia/Tokyo"), ("shanghai", "Asia/Shanghai")):
        signup(book, member, at - timedelta(days=30), tz)
        card(book, member, at - timedelta(days=1), None, "1.5")
        event = paid(book, member, f"o-{member}", at, 12345, "silver", "1.2")
        calc = book.members[member].earned[event]
        if member == "tokyo":  # 123 x 1.2 x 2 x 1.5 = 442.8
            assert calc.points == 442
            assert dict(calc.factors) == {"tier": D("1.2"), "member_day": 2, "card": D("1.5")}
        else:  # 123 x 1.2 x 1.5 = 221.4
            assert calc.points == 221
            assert dict(calc.factors) == {"tier": D("1.2"), "card": D("1.5")}
        assert (calc.base_points, calc.capped_points) == (123, 0)
    # pending 7 days from the order's time: nothing available yet but the sign-up bonus
    assert book.account("tokyo", T).pending == 442
    assert book.account("tokyo", T).available == 100


def test_the_floor_is_exact_where_floats_are_not():
    """100 x 1.15 is exactly 115 (in binary floats 114.999...); 5 x 1.2 exactly 6; 3 x 1.1 is
    3.3; 99 minor earn nothing whatever the multiplier."""
    book = Book()
    at = datetime(2031, 3, 17, 4, tzinfo=UTC)
    signup(book, "m", at - timedelta(days=3))
    cases = [(10000, "1.15", 115), (500, "1.2", 6), (300, "1.1", 3), (99, "1.75", 0)]
    for n, (minor, multiplier, points) in enumerate(cases):
        event = paid(book, "m", f"o{n}", at + timedelta(minutes=n), minor, "gold", multiplier)
        got = book.members["m"].earned.get(event)
        assert (got.points if got else 0) == points, (minor, multiplier)
    assert 100 * 1.15 < 115  # what a float computation would floor to 114


def test_a_card_counts_from_valid_from_to_just_before_expires_at_and_the_best_wins():
    book = Book()
    start = datetime(2031, 3, 18, 2, 19, 6, tzinfo=UTC)
    end = start + timedelta(days=1)
    signup(book, "m", start - timedelta(days=5), "Europe/Berlin")
    card(book, "m", start, end, "2.0")
    card(book, "m", start + timedelta(hours=2), None, "1.25")
    second = timedelta(seconds=1)
    times = [
        (start - second, 100),  # before the card was valid: without it
        (start, 200),
        (start + timedelta(hours=3), 200),  # both valid: the best, not the product
        (end - second, 200),
        (end, 125),  # the first has ended, the second (no end) holds
    ]
    for n, (at, points) in enumerate(times):
        event = paid(book, "m", f"o{n}", at, 10000)
        assert book.members["m"].earned[event].points == points, at


def test_the_daily_cap_goes_by_the_members_local_day():
    """New York is UTC-4 in late March: 03:55Z and 03:58Z are the 17th, 04:01Z the 18th there;
    in Shanghai all three are the 18th."""
    book = Book()
    orders = [
        (datetime(2031, 3, 18, 3, 55, tzinfo=UTC), 900_000),
        (datetime(2031, 3, 18, 3, 58, tzinfo=UTC), 300_000),
        (datetime(2031, 3, 18, 4, 1, tzinfo=UTC), 500_000),
    ]
    granted = {}
    for member, tz in (("ny", "America/New_York"), ("sh", "Asia/Shanghai")):
        signup(book, member, datetime(2031, 3, 1, tzinfo=UTC), tz)
        granted[member] = []
        for n, (at, minor) in enumerate(orders):
            calc = book.members[member].earned[paid(book, member, f"{member}{n}", at, minor)]
            granted[member].append((calc.points, calc.capped_points))
    assert granted["ny"] == [(9000, 0), (1000, 2000), (5000, 0)]
    assert granted["sh"] == [(9000, 0), (1000, 2000), (0, 5000)]
    # the cap is not refunded: a refund of the first order frees no room for later ones
    assert book.account("ny", T).pending == 15000


def test_the_referral_bonus_follows_the_referred_order():
    book = Book()
    at = datetime(2031, 3, 17, 2, tzinfo=UTC)
    for member in ("referrer", "friend", "friend2"):
        signup(book, member, at - timedelta(days=40))
    # during its pending week: from pending
    paid(book, "friend", "o1", at, 5000)
    referral(book, "referrer", "friend", "o1", at)
    assert book.account("referrer", T).pending == 200
    assert book.account("referrer", T).lifetime_earned == 300
    refund(book, "friend", "o1", 2500, 5000, at + timedelta(hours=1))  # in part: it stays
    assert book.account("referrer", T).pending == 200
    event = cancel(book, "friend", "o1", at + timedelta(hours=2))
    assert book.account("referrer", T).pending == 0
    assert book.account("referrer", T).lifetime_earned == 100
    assert book.members["referrer"].reversed[event] == 200
    # qualifying again on the next order, released, spent, then the order refunded in full:
    # from available, and what was spent is a debt that refuses redemptions
    paid(book, "friend", "o2", at + timedelta(hours=3), 3000)
    referral(book, "referrer", "friend", "o2", at + timedelta(hours=3))
    release_at = at + timedelta(days=7, hours=3)
    book.release(release_at)
    assert book.account("referrer", release_at).available == 300
    spent = book.redeem("referrer", 300, release_at)
    assert isinstance(spent, Redemption)
    refund(book, "friend", "o2", 3000, 3000, release_at, now=release_at)
    view = book.account("referrer", release_at)
    assert (view.available, view.lifetime_earned, view.lifetime_redeemed) == (-200, 100, 300)
    assert book.redeem("referrer", 1, release_at) == Refused(422, "insufficient_points")
    # the next points to become available repay the debt first
    paid(book, "friend2", "o3", release_at, 8000, now=release_at)
    referral(book, "referrer", "friend2", "o3", release_at, now=release_at)
    later = release_at + timedelta(days=7)
    book.release(later)
    assert book.account("referrer", later).available == 0
    assert book.account("referrer", later).expiring == ()


def test_a_referral_for_an_order_taken_back_already_is_not_the_oracles_to_guess():
    book = Book()
    at = datetime(2031, 3, 17, 2, tzinfo=UTC)
    signup(book, "r", at - timedelta(days=3))
    signup(book, "f", at - timedelta(days=3))
    paid(book, "f", "o1", at, 5000)
    cancel(book, "f", "o1", at + timedelta(hours=1))
    with pytest.raises(Ambiguous):
        referral(book, "r", "f", "o1", at)


def test_a_backdated_order_past_its_year_is_earned_and_already_expired():
    book = Book()
    signup(book, "m", T - timedelta(days=10), "Europe/Berlin")
    event = paid(book, "m", "old", T - timedelta(days=400), 10000)
    view = book.account("m", T)
    assert (view.available, view.pending, view.lifetime_earned) == (100, 0, 200)
    assert [points for _, points in view.expiring] == [100]  # the sign-up bonus alone
    assert book.members["m"].earned[event].points == 100
    assert book.expired_unexpired("m", T) == 100
    assert book.account("m", T, counting_expired=True).available == 200
    assert book.redeem("m", 150, T) == Refused(422, "insufficient_points")
    assert isinstance(book.redeem("m", 100, T), Redemption)


def test_redemptions_take_what_expires_first_and_cancels_give_expired_points_back_expired():
    """Sign-up bonus expiring at T + 5 d, a lot of 200 expiring in a year: a redemption of 150
    takes the 100 first, then 50; cancelled after T + 5 d the 100 come back expired."""
    for cancel_after_the_job in (False, True):
        book = Book()
        signup(book, "m", T - timedelta(days=360), "Asia/Kolkata")
        paid(book, "m", "o", T - timedelta(days=10), 20000)  # its week is over: available
        assert book.account("m", T).available == 300
        redemption = book.redeem("m", 150, T)
        assert isinstance(redemption, Redemption)
        assert [n for _, n in redemption.portions] == [100, 50]
        assert [points for _, points in book.account("m", T).expiring] == [150]
        later = T + timedelta(days=6)
        assert book.account("m", later).available == 150  # nothing lost: the 100 were spent
        if cancel_after_the_job:
            book.expire(later)
        book.cancel(redemption, later)
        book.expire(later)
        view = book.account("m", later)
        assert (view.available, view.lifetime_redeemed, view.lifetime_earned) == (200, 0, 300)
        assert book.account("m", later, counting_expired=True).available == 200


def test_expiring_lists_each_local_date_of_available_lots():
    """A Tokyo order at 2031-03-17T20:00Z expires at 2032-03-16T20:00Z (2032 is a leap year),
    which is 05:00 on 2032-03-17 in Tokyo."""
    book = Book()
    signup(book, "m", datetime(2031, 3, 1, 16, tzinfo=UTC), "Asia/Tokyo")
    paid(book, "m", "o", datetime(2031, 3, 17, 20, tzinfo=UTC), 12300)
    at = datetime(2031, 3, 25, tzinfo=UTC)
    book.release(at)
    assert book.account("m", at).expiring == ((date(2032, 3, 1), 100), (date(2032, 3, 17), 123))
    utc = book.account("m", at, utc_dates=True).expiring
    assert utc == ((date(2032, 2, 29), 100), (date(2032, 3, 16), 123))


def test_an_erased_member_takes_no_money():
    book = Book()
    signup(book, "m", T - timedelta(days=1))
    book.apply(EdgeFact(_id(), "erased", "m", T), T)
    assert book.redeem("m", 10, T) == Refused(409, "member_erased")
    assert book.account("m", T).available == 100  # readable, unchanged


def test_refunds_take_the_own_lot_first_then_available_then_leave_a_debt():
    book = Book()
    signup(book, "m", T - timedelta(days=30))
    paid(book, "m", "a", T - timedelta(days=12), 10000)  # 100, released
    paid(book, "m", "b", T - timedelta(days=11), 5000)  # 50, released
    book.release(T)
    redemption = book.redeem("m", 120, T)  # the sign-up bonus (expires first), 20 of a
    assert isinstance(redemption, Redemption)
    assert [n for _, n in redemption.portions] == [100, 20]
    refund(book, "m", "a", 10000, 10000, T)  # 80 from a's lot, 20 from b's
    assert book.account("m", T).available == 30
    refund(book, "m", "b", 5000, 5000, T)  # 30 from b's lot, 20 a debt
    view = book.account("m", T)
    assert (view.available, view.lifetime_earned, view.expiring) == (-20, 100, ())


def test_a_refunded_order_holds_the_net_amount_never_more_than_it_was_awarded():
    book = Book()
    at = datetime(2031, 3, 18, 2, tzinfo=UTC)
    signup(book, "m", at - timedelta(days=3))
    paid(book, "m", "cap", at, 1_050_000)  # 10500 points, 10000 granted
    paid(book, "m", "o", at + timedelta(minutes=1), 12345, "silver", "1.2")  # all capped
    assert book.account("m", T).pending == 10000
    refund(book, "m", "cap", 40_000, 1_050_000, at + timedelta(hours=1))  # net 10100 > 10000
    assert book.account("m", T).pending == 10000
    refund(book, "m", "cap", 60_000, 1_050_000, at + timedelta(hours=2))  # net 9900
    assert book.account("m", T).pending == 9900
    # the same refund again, and the order paid again under a new id: nothing
    refund(book, "m", "cap", 60_000, 1_050_000, at + timedelta(hours=3))
    paid(book, "m", "cap", at, 1_050_000)
    assert book.account("m", T).pending == 9900
    assert book.account("m", T).lifetime_earned == 10000


def test_the_stream_exercises_every_edge():
    for seed, members in ((SEED, MEMBERS), (SEED + 1, 40), (7, 30)):
        assert missing_edges(build(seed, members)) == []


def test_any_delivery_leaves_the_oracle_where_the_clean_one_does():
    """What `test_edges.py` relies on: duplicates, re-sent facts, members reordered among
    themselves and old events again, phase by phase, end in the same accounts at every
    check (the plan's snapshots were taken over the clean stream)."""
    plan = build(SEED, MEMBERS)
    book = Book()
    redemptions: dict[str, Redemption] = {}
    earlier: list[EdgeFact] = []
    for n, step in enumerate(plan.steps):
        if isinstance(step, Publish):
            delivery = with_duplicates(step.facts, plan.members, plan.seed * 100 + n, earlier)
            assert delivery.duplicates > 0
            for fact in delivery.facts:
                book.apply(fact, step.now)
            earlier.extend(step.facts)
        elif isinstance(step, RunJob):
            (book.release if step.job == "release-pending" else book.expire)(step.as_of)
        elif isinstance(step, Redeem):
            outcome = book.redeem(step.member_id, step.points, step.now)
            if isinstance(outcome, Redemption):
                redemptions[step.key] = outcome
                assert step.expect == 201
            else:
                assert (outcome.status, outcome.code) == (step.expect, step.code)
        elif isinstance(step, Cancel):
            book.cancel(redemptions.pop(step.key), step.now)
        elif isinstance(step, Check):
            for member_id in plan.members:
                assert book.account(member_id, step.now) == plan.snapshots[step.label][member_id]
