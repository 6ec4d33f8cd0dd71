"""Campaign triggers, holdout, budgets, stock and per-member limits: the domain alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loyalty_coupon.domain.campaigns import (
    Allocator,
    Campaign,
    Fact,
    GrantRequest,
    fact_matches,
    in_holdout,
    trigger_problems,
)
from loyalty_coupon.domain.templates import CouponTemplate

NOW = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)


def campaign(trigger_type="member.registered", trigger=None, **kw) -> Campaign:
    return Campaign(
        code=kw.pop("code", "C"),
        template_codes=kw.pop("template_codes", ("T",)),
        trigger_type=trigger_type,
        trigger=trigger or {},
        **kw,
    )


def fact(kind="member.registered", **kw) -> Fact:
    return Fact(kind, kw.pop("member_id", "m1"), kw.pop("at", NOW), kw.pop("key", "k"), **kw)


def test_each_trigger_type_matches_its_fact():
    assert fact_matches(campaign(), fact())
    first = campaign("first_order")
    assert fact_matches(first, fact("order.paid", paid_order_count=1))
    assert not fact_matches(first, fact("order.paid", paid_order_count=2))
    second = campaign("nth_order", {"n": 2})
    assert fact_matches(second, fact("order.paid", paid_order_count=2))
    assert not fact_matches(second, fact("order.paid", paid_order_count=3))
    winback = campaign("segment.entered", {"segment_code": "easy-winback"})
    assert fact_matches(winback, fact("segment.entered", segment_code="easy-winback"))
    assert not fact_matches(winback, fact("segment.entered", segment_code="other"))
    gold = campaign("tier_changed", {"tier": "gold"})
    assert fact_matches(gold, fact("tier_changed", tier="gold"))
    assert not fact_matches(gold, fact("tier_changed", tier="silver"))
    streak = campaign("checkin_streak", {"days": 7})
    assert [
        d for d in range(1, 22) if fact_matches(streak, fact("checkin_streak", streak_days=d))
    ] == [7, 14, 21]
    assert not fact_matches(campaign("manual"), fact())
    assert not fact_matches(campaign("birthday"), fact())


def test_dates_and_status_are_checked_at_the_facts_time():
    c = campaign(starts_at=NOW, ends_at=NOW + timedelta(days=1))
    assert fact_matches(c, fact(at=NOW))
    assert not fact_matches(c, fact(at=NOW - timedelta(seconds=1)))
    assert not fact_matches(c, fact(at=NOW + timedelta(days=1)))  # the end is exclusive
    assert not fact_matches(campaign(status="paused"), fact())


def test_trigger_parameters_are_checked():
    assert trigger_problems({"type": "member.registered"}) == []
    assert [f for f, _ in trigger_problems({"type": "nth_order"})] == ["n"]
    assert [f for f, _ in trigger_problems({"type": "nth_order", "n": 1})] == ["n"]
    assert [f for f, _ in trigger_problems({"type": "checkin_streak", "days": "7"})] == ["days"]
    assert [f for f, _ in trigger_problems({"type": "segment.entered"})] == ["segment_code"]
    assert [f for f, _ in trigger_problems({"type": "first_order", "n": 2})] == ["n"]
    assert [f for f, _ in trigger_problems({"type": "whenever"})] == ["type"]


def test_holdout_is_deterministic_and_close_to_its_share():
    members = [f"m{i:05d}" for i in range(20000)]
    held = [m for m in members if in_holdout("WINBACK", m, 10)]
    assert held == [m for m in members if in_holdout("WINBACK", m, 10)]
    assert 0.09 < len(held) / len(members) < 0.11
    assert not any(in_holdout("WINBACK", m, 0) for m in members[:1000])
    assert all(in_holdout("WINBACK", m, 100) for m in members[:1000])
    # Another campaign draws another control group.
    assert set(held) != {m for m in members if in_holdout("WELCOME", m, 10)}


def allocator(*campaigns: Campaign, stock=None, limit=1, held=None) -> Allocator:
    template = CouponTemplate(
        code="T", name="t", kind="amount_off", value=100, valid_days=7, per_member_limit=limit
    )
    return Allocator(
        campaigns={c.code: c for c in campaigns},
        templates={"T": template},
        stock_left={"T": stock},
        held=held or {},
        granted=set(),
    )


def test_a_fact_grants_once_and_limits_hold():
    a = allocator(campaign(), limit=2)
    first = a.grant(GrantRequest("C", "m1", "k1", "campaign"), NOW)
    assert first.outcome == "issued" and len(first.coupons) == 1
    assert first.coupons[0].valid_until == NOW + timedelta(days=7)
    assert a.grant(GrantRequest("C", "m1", "k1", "campaign"), NOW).outcome == "duplicate"
    assert a.grant(GrantRequest("C", "m1", "k2", "campaign"), NOW).outcome == "issued"
    third = a.grant(GrantRequest("C", "m1", "k3", "campaign"), NOW)
    assert third.outcome == "not_issued" and third.reasons == ["T:member_limit_reached"]


def test_budget_and_stock_run_out():
    a = allocator(campaign(budget=2), stock=5)
    outcomes = [a.grant(GrantRequest("C", f"m{i}", "k", "campaign"), NOW) for i in range(4)]
    assert [g.outcome for g in outcomes] == ["issued", "issued", "not_issued", "not_issued"]
    assert outcomes[2].reasons == ["T:budget_exhausted"]
    b = allocator(campaign(), stock=1)
    assert b.grant(GrantRequest("C", "m1", "k", "campaign"), NOW).outcome == "issued"
    assert b.grant(GrantRequest("C", "m2", "k", "campaign"), NOW).reasons == ["T:out_of_stock"]


def test_holdout_members_get_nothing_and_spend_no_budget():
    everyone_out = allocator(campaign(holdout_percent=100, budget=1))
    grant = everyone_out.grant(GrantRequest("C", "m1", "k", "campaign"), NOW)
    assert grant.outcome == "holdout" and grant.coupons == []
    assert everyone_out.budget_left["C"] == 1
