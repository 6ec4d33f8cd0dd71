"""The signup bonus: points available at once, in a lot that expires like any other."""

from __future__ import annotations

from datetime import datetime

from .ledger import EarningRules, Effects, LedgerEntry, PointsLot

SIGNUP_RULE = "signup"


def credit_signup_bonus(
    effects: Effects,
    *,
    member_id: str,
    event_id: str,
    registered_at: datetime,
    recorded_at: datetime,
    rules: EarningRules,
    lot_id: str,
    entry_id: str,
) -> None:
    if rules.signup_points <= 0:
        return
    expires_at = registered_at + rules.lot_validity
    lot = PointsLot(
        lot_id=lot_id,
        member_id=member_id,
        points=rules.signup_points,
        earned_at=registered_at,
        available_at=registered_at,
        expires_at=expires_at,
        rule=SIGNUP_RULE,
        source_event_id=event_id,
    )
    entry = LedgerEntry(
        entry_id=entry_id,
        member_id=member_id,
        kind="earn",
        points=rules.signup_points,
        reason="signup bonus",
        rule=SIGNUP_RULE,
        source_event_id=event_id,
        source_type="member.registered",
        created_at=recorded_at,
        lot_id=lot_id,
        available_at=registered_at,
        expires_at=expires_at,
    )
    effects.earn_available(lot, entry)
