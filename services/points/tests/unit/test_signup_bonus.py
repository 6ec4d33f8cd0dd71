"""The signup bonus as a pure domain function: one lot, one ledger entry, one balance change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loyalty_points.domain.ledger import (
    BalanceChange,
    EarningRules,
    Effects,
    LedgerEntry,
    PointsLot,
)
from loyalty_points.domain.signup import SIGNUP_RULE, credit_signup_bonus

REGISTERED_AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
RECORDED_AT = REGISTERED_AT + timedelta(seconds=2)


def credit(effects: Effects, rules: EarningRules, member_id: str = "m1", n: int = 1) -> None:
    credit_signup_bonus(
        effects,
        member_id=member_id,
        event_id=f"evt-{member_id}",
        registered_at=REGISTERED_AT,
        recorded_at=RECORDED_AT,
        rules=rules,
        lot_id=f"lot-{member_id}-{n}",
        entry_id=f"entry-{member_id}-{n}",
    )


def test_signup_credits_one_available_lot_of_100_expiring_after_365_days():
    effects = Effects()
    credit(effects, EarningRules())

    assert effects.lots == [
        PointsLot(
            lot_id="lot-m1-1",
            member_id="m1",
            points=100,
            earned_at=REGISTERED_AT,
            available_at=REGISTERED_AT,  # available at once, not pending
            expires_at=datetime(2027, 3, 1, 9, 30, tzinfo=UTC),
            rule="signup",
            source_event_id="evt-m1",
        )
    ]
    assert effects.lots[0].expires_at - effects.lots[0].earned_at == timedelta(days=365)


def test_signup_writes_one_earn_entry_that_says_why():
    effects = Effects()
    credit(effects, EarningRules())

    assert effects.entries == [
        LedgerEntry(
            entry_id="entry-m1-1",
            member_id="m1",
            kind="earn",
            points=100,
            reason="signup bonus",
            rule=SIGNUP_RULE,
            source_event_id="evt-m1",
            source_type="member.registered",
            created_at=RECORDED_AT,
            lot_id="lot-m1-1",
            available_at=REGISTERED_AT,
            expires_at=REGISTERED_AT + timedelta(days=365),
        )
    ]
    assert SIGNUP_RULE == "signup"


def test_signup_raises_available_and_lifetime_earned_only():
    effects = Effects()
    credit(effects, EarningRules())

    assert dict(effects.balances) == {
        "m1": BalanceChange(available=100, pending=0, lifetime_earned=100, lifetime_redeemed=0)
    }


def test_balances_add_up_per_member_in_one_batch():
    effects = Effects()
    credit(effects, EarningRules(), member_id="m1")
    credit(effects, EarningRules(), member_id="m2")

    assert [lot.member_id for lot in effects.lots] == ["m1", "m2"]
    assert effects.balances["m1"].available == 100
    assert effects.balances["m2"].available == 100
    # the balance equals the sum of the entries
    for member_id, change in effects.balances.items():
        assert change.available == sum(
            e.points for e in effects.entries if e.member_id == member_id
        )


def test_configured_rules_set_the_points_and_the_validity():
    effects = Effects()
    credit(effects, EarningRules(signup_points=250, lot_validity=timedelta(days=30)))

    (lot,) = effects.lots
    assert lot.points == 250
    assert lot.expires_at == REGISTERED_AT + timedelta(days=30)
    assert effects.entries[0].points == 250
    assert effects.balances["m1"].available == 250


def test_a_rule_of_zero_signup_points_credits_nothing():
    effects = Effects()
    credit(effects, EarningRules(signup_points=0))

    assert effects.lots == []
    assert effects.entries == []
    assert dict(effects.balances) == {}
