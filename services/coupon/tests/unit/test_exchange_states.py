"""The exchange's state machine: which status may go to which, and what each status tells."""

from __future__ import annotations

import pytest
from loyalty_coupon.domain.exchanges import (
    FINAL,
    RECONCILED,
    TRANSITIONS,
    ExchangeStatus,
    IllegalTransition,
    can_move,
    check_move,
    decided,
    points_refund,
)

S = ExchangeStatus
ALLOWED = {
    ("pending", "pending"),  # a retry takes it up again; why the points service did not answer
    ("pending", "issued"),
    ("pending", "failed"),
    ("pending", "refunding"),
    ("refunding", "refunding"),  # the job takes over a refund a crash left half-done
    ("refunding", "refunded"),
    ("refunding", "refund_pending"),
    ("refunding", "failed"),  # the replayed debit is refused: it never happened
    ("refund_pending", "refunding"),
}


def test_every_status_has_its_row_and_only_the_listed_moves_are_allowed():
    assert set(TRANSITIONS) == set(S)
    for from_ in S:
        for to in S:
            assert can_move(from_, to) is ((from_.value, to.value) in ALLOWED), (from_, to)


@pytest.mark.parametrize(
    ("from_", "to"),
    [
        ("issued", "refunding"),  # a coupon issued is never also refunded...
        ("refunded", "issued"),  # ...nor a refunded exchange given its coupon after all
        ("refunding", "issued"),
        ("refund_pending", "issued"),
        ("failed", "issued"),
        ("issued", "pending"),
        ("refunded", "refunding"),  # points come back once
        ("refund_pending", "refunded"),  # only the claimant of a refund (refunding) settles it
        ("refund_pending", "pending"),
    ],
)
def test_the_moves_that_would_lose_or_double_money_are_refused(from_, to):
    assert not can_move(from_, to)
    with pytest.raises(IllegalTransition, match=f"from {from_} to {to}"):
        check_move(from_, to)


def test_check_move_lets_the_allowed_moves_through():
    for from_, to in ALLOWED:
        check_move(S(from_), S(to))


def test_nothing_leads_back_to_pending_nor_from_no_coupon_to_issued():
    into_pending = {f for f, tos in TRANSITIONS.items() if S.PENDING in tos}
    assert into_pending == {S.PENDING}
    into_issued = {f for f, tos in TRANSITIONS.items() if S.ISSUED in tos}
    assert into_issued == {S.PENDING}


def test_final_states_and_what_the_job_takes_up():
    assert FINAL == {S.ISSUED, S.FAILED, S.REFUNDED}
    assert RECONCILED == {S.PENDING, S.REFUNDING, S.REFUND_PENDING}
    assert not FINAL & RECONCILED


def test_every_status_but_pending_is_decided():
    assert [s for s in S if not decided(s)] == [S.PENDING]
    assert decided("issued") and not decided("pending")


def test_points_refund_tells_how_far_giving_back_has_got():
    assert points_refund(S.REFUNDED) == "done"
    assert points_refund(S.REFUNDING) == "pending"
    assert points_refund("refund_pending") == "pending"
    for s in (S.PENDING, S.ISSUED, S.FAILED):
        assert points_refund(s) is None


def test_an_unknown_status_is_an_error_not_a_move():
    with pytest.raises(ValueError):
        can_move("pending", "cancelled")
