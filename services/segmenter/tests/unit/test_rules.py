"""The rule language: validation that names the problem, evaluation, and the partition law."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty_segmenter.domain.profile import Profile
from loyalty_segmenter.domain.rules import (
    RuleError,
    evaluate,
    is_time_relative,
    parse_rule,
    to_json,
    uses_rfm_scores,
)

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)

HEAVY_AT_RISK = {
    "all": [
        {"field": "buyer_weight", "op": "eq", "value": "heavy"},
        {"field": "churn_risk", "op": "gte", "value": 0.5},
    ]
}
EASY_WINBACK_BIG_SPENDERS = {
    "all": [
        {"field": "lifecycle_stage", "op": "eq", "value": "easy_winback"},
        {"field": "spend_minor", "op": "gte", "value": 100000},
    ]
}


def values(**overrides):
    base = Profile(member_id="m1").rule_values(T0)
    base.update(overrides)
    return base


def test_examples_from_the_readme():
    heavy = parse_rule(HEAVY_AT_RISK)
    assert evaluate(heavy, values(buyer_weight="heavy", churn_risk=0.7))
    assert not evaluate(heavy, values(buyer_weight="heavy", churn_risk=0.3))
    assert not evaluate(heavy, values(buyer_weight="medium", churn_risk=0.9))
    winback = parse_rule(EASY_WINBACK_BIG_SPENDERS)
    assert evaluate(winback, values(lifecycle_stage="easy_winback", spend_minor=100000))
    assert not evaluate(winback, values(lifecycle_stage="easy_winback", spend_minor=99999))


@pytest.mark.parametrize(
    ("cond", "actual", "expected"),
    [
        ({"op": "eq", "value": 3}, 3, True),
        ({"op": "ne", "value": 3}, 3, False),
        ({"op": "lt", "value": 3}, 2, True),
        ({"op": "lte", "value": 3}, 3, True),
        ({"op": "gt", "value": 3}, 3, False),
        ({"op": "gte", "value": 3}, 3, True),
        ({"op": "in", "value": [1, 2]}, 2, True),
        ({"op": "between", "value": [2, 4]}, 4, True),
        ({"op": "between", "value": [2, 4]}, 5, False),
        ({"op": "eq", "value": 3}, None, False),  # no value: every comparison is false
        ({"op": "ne", "value": 3}, None, True),  # ... and ne is exactly not eq
        ({"op": "lt", "value": 3}, None, False),
    ],
)
def test_ops_on_an_integer_field(cond, actual, expected):
    rule = parse_rule({"field": "rfm.r", **cond})
    assert evaluate(rule, values(**{"rfm.r": actual})) is expected


def test_contains_on_tags_and_datetimes():
    rule = parse_rule({"field": "preference_tags", "op": "contains", "value": "snacks"})
    assert evaluate(rule, values(preference_tags=["tea", "snacks"]))
    assert not evaluate(rule, values(preference_tags=[]))
    since = parse_rule(
        {"field": "last_order_at", "op": "gte", "value": "2026-03-01T00:00:00+08:00"}
    )
    assert evaluate(since, values(last_order_at=T0))
    assert not evaluate(since, values(last_order_at=T0 - timedelta(days=2)))


def test_kinds_of_rules_are_known():
    assert is_time_relative(parse_rule({"field": "rfm.recency_days", "op": "gt", "value": 30}))
    assert not is_time_relative(parse_rule(EASY_WINBACK_BIG_SPENDERS))
    assert uses_rfm_scores(parse_rule({"not": {"field": "rfm.m", "op": "eq", "value": 5}}))


def errors_of(raw) -> list[dict]:
    with pytest.raises(RuleError) as caught:
        parse_rule(raw, ["rule"])
    return caught.value.errors


@pytest.mark.parametrize(
    ("raw", "loc", "words"),
    [
        ({"field": "shoe_size", "op": "eq", "value": 3}, ["rule", "field"], "unknown field"),
        ({"field": "spend_minor", "op": "like", "value": 3}, ["rule", "op"], "unknown op"),
        (
            {"field": "lifecycle_stage", "op": "gt", "value": "new"},
            ["rule", "op"],
            "does not apply",
        ),
        ({"field": "spend_minor", "op": "eq", "value": "100"}, ["rule", "value"], "whole numbers"),
        ({"field": "spend_minor", "op": "eq", "value": True}, ["rule", "value"], "whole numbers"),
        ({"field": "lifecycle_stage", "op": "eq", "value": "asleep"}, ["rule", "value"], "not a"),
        ({"field": "spend_minor", "op": "between", "value": [5, 1]}, ["rule", "value"], "low"),
        ({"field": "spend_minor", "op": "in", "value": []}, ["rule", "value"], "'in' takes"),
        (
            {"field": "last_order_at", "op": "gt", "value": "2026-03-01"},
            ["rule", "value"],
            "offset",
        ),
        ({"field": "spend_minor", "op": "eq"}, ["rule", "value"], "needs a 'value'"),
        ({"all": []}, ["rule", "all"], "non-empty"),
        ({"all": [], "any": []}, ["rule"], "exactly one"),
        (
            {"not": {"field": "tier", "op": "eq", "value": "gold"}, "x": 1},
            ["rule", "x"],
            "unexpected",
        ),
        (
            {"any": [{"field": "tier", "op": "eq", "value": "gold"}, {"field": "nope"}]},
            ["rule", "any", 1, "field"],
            "unknown field",
        ),
        ("heavy", ["rule"], "is an object"),
    ],
)
def test_invalid_rules_name_the_problem(raw, loc, words):
    errors = errors_of(raw)
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors


def test_every_problem_is_reported():
    errors = errors_of(
        {
            "all": [
                {"field": "nope", "op": "eq", "value": 1},
                {"field": "tier", "op": "gt", "value": "gold"},
            ]
        }
    )
    assert [e["loc"] for e in errors] == [["rule", "all", 0, "field"], ["rule", "all", 1, "op"]]


def test_canonical_json_round_trips():
    raw = {
        "any": [
            EASY_WINBACK_BIG_SPENDERS,
            {
                "not": {
                    "field": "first_order_at",
                    "op": "between",
                    "value": ["2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"],
                }
            },
        ]
    }
    rule = parse_rule(raw)
    assert parse_rule(to_json(rule)) == rule


# --- property: a rule and its `not` partition the members ------------------------------------

STAGES = ["prospect", "new", "active", "cooling", "easy_winback", "hard_winback", "lost"]
maybe_int = st.none() | st.integers(min_value=0, max_value=10)

profiles = st.fixed_dictionaries(
    {
        "orders_count": st.integers(min_value=0, max_value=10),
        "spend_minor": st.integers(min_value=0, max_value=10),
        "rfm.r": maybe_int,
        "rfm.recency_days": maybe_int,
        "churn_risk": st.none() | st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        "lifecycle_stage": st.sampled_from(STAGES),
        "tier": st.none() | st.sampled_from(["bronze", "gold"]),
        "preference_tags": st.lists(st.sampled_from(["snacks", "tea"]), unique=True),
        "registered": st.booleans(),
    }
)


def conditions():
    small = st.integers(min_value=0, max_value=10)
    numeric_fields = st.sampled_from(["orders_count", "spend_minor", "rfm.r", "rfm.recency_days"])
    return st.one_of(
        st.builds(
            lambda f, op, v: {"field": f, "op": op, "value": v},
            numeric_fields,
            st.sampled_from(["eq", "ne", "lt", "lte", "gt", "gte"]),
            small,
        ),
        st.builds(
            lambda f, a, b: {"field": f, "op": "between", "value": sorted([a, b])},
            numeric_fields,
            small,
            small,
        ),
        st.builds(
            lambda f, vs: {"field": f, "op": "in", "value": vs},
            numeric_fields,
            st.lists(small, min_size=1, max_size=3),
        ),
        st.builds(
            lambda op, v: {"field": "churn_risk", "op": op, "value": v},
            st.sampled_from(["eq", "ne", "lt", "gte"]),
            st.sampled_from([0, 0.25, 0.5]),
        ),
        st.builds(
            lambda op, v: {"field": "lifecycle_stage", "op": op, "value": v},
            st.sampled_from(["eq", "ne"]),
            st.sampled_from(STAGES),
        ),
        st.builds(
            lambda v: {"field": "tier", "op": "in", "value": v},
            st.lists(st.sampled_from(["bronze", "gold", "silver"]), min_size=1, max_size=2),
        ),
        st.builds(
            lambda v: {"field": "preference_tags", "op": "contains", "value": v},
            st.sampled_from(["snacks", "tea"]),
        ),
        st.builds(
            lambda op, v: {"field": "registered", "op": op, "value": v},
            st.sampled_from(["eq", "ne"]),
            st.booleans(),
        ),
    )


rules = st.recursive(
    conditions(),
    lambda inner: st.one_of(
        st.builds(lambda rs: {"all": rs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda rs: {"any": rs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda r: {"not": r}, inner),
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(rules, st.lists(profiles, min_size=1, max_size=20))
def test_a_rule_and_its_not_partition_the_members(raw, members):
    rule, negated = parse_rule(raw), parse_rule({"not": raw})
    inside = [i for i, m in enumerate(members) if evaluate(rule, m)]
    outside = [i for i, m in enumerate(members) if evaluate(negated, m)]
    assert sorted(inside + outside) == list(range(len(members)))
    assert not set(inside) & set(outside)


@given(rules, profiles)
def test_all_and_any_follow_de_morgan(raw, member):
    other = {"field": "orders_count", "op": "gte", "value": 3}
    left = parse_rule({"not": {"all": [raw, other]}})
    right = parse_rule({"any": [{"not": raw}, {"not": other}]})
    assert evaluate(left, member) == evaluate(right, member)
