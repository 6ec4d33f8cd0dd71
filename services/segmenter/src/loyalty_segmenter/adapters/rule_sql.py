"""Compiles a parsed segment rule to a SQL condition over the profiles table.

Only whitelisted columns appear in the SQL, and every value is a bound parameter. Each
comparison is wrapped in `coalesce(..., false)`, so a field without a value compares false
instead of unknown, and `NOT` is the exact complement, as in domain.rules.evaluate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    String,
    and_,
    case,
    cast,
    extract,
    false,
    func,
    literal,
    not_,
    or_,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from ..domain.rules import All, AnyOf, Condition, Not, Rule
from .tables import profiles

_COLUMNS: dict[str, Any] = {
    "orders_count": profiles.c.orders_count,
    "orders_365d": profiles.c.orders_365d,
    "first_order_at": profiles.c.first_order_at,
    "last_order_at": profiles.c.last_order_at,
    "spend_minor": profiles.c.spend_minor,
    "spend_365d_minor": profiles.c.spend_365d_minor,
    "rfm.r": profiles.c.rfm_r,
    "rfm.f": profiles.c.rfm_f,
    "rfm.m": profiles.c.rfm_m,
    "lifecycle_stage": profiles.c.lifecycle_stage,
    "buyer_weight": profiles.c.buyer_weight,
    "preference_tags": profiles.c.preference_tags,
    "churn_risk": profiles.c.churn_risk,
    "tier": profiles.c.tier,
    "points_available": profiles.c.points_available,
}


def _column(name: str, as_of: datetime) -> Any:
    if name == "rfm.recency_days":
        elapsed = literal(as_of, DateTime(timezone=True)) - profiles.c.last_order_at
        days = func.floor(extract("epoch", elapsed) / 86400)
        # not greatest(0, days): PostgreSQL's greatest ignores NULL, and a member without an
        # order must have no recency, not 0
        return case((days < 0, 0), else_=days)
    if name == "registered":
        return profiles.c.registered_at.is_not(None)
    return _COLUMNS[name]


def _bind(value: Any) -> Any:
    if isinstance(value, bool):
        return literal(value, Boolean)
    if isinstance(value, int):
        return literal(value, BigInteger)
    if isinstance(value, float):
        return literal(value, Float)
    if isinstance(value, datetime):
        return literal(value, DateTime(timezone=True))
    return literal(value, String)


def _condition(cond: Condition, as_of: datetime) -> ColumnElement[bool]:
    column = _column(cond.field, as_of)
    op, value = cond.op, cond.value
    if op == "ne":
        return not_(_condition(Condition(cond.field, "eq", value), as_of))
    if op == "eq":
        test = column == _bind(value)
    elif op == "lt":
        test = column < _bind(value)
    elif op == "lte":
        test = column <= _bind(value)
    elif op == "gt":
        test = column > _bind(value)
    elif op == "gte":
        test = column >= _bind(value)
    elif op == "in":
        test = column.in_([_bind(v) for v in value])
    elif op == "between":
        test = and_(column >= _bind(value[0]), column <= _bind(value[1]))
    elif op == "contains":  # preference_tags is a JSON list of strings
        test = column.contains(cast(literal([value], JSONB), JSONB))
    else:
        raise ValueError(f"unknown op {op}")
    return func.coalesce(test, false())


def to_sql(rule: Rule, as_of: datetime) -> ColumnElement[bool]:
    if isinstance(rule, All):
        return and_(*(to_sql(r, as_of) for r in rule.rules))
    if isinstance(rule, AnyOf):
        return or_(*(to_sql(r, as_of) for r in rule.rules))
    if isinstance(rule, Not):
        return not_(to_sql(rule.rule, as_of))
    return _condition(rule, as_of)


def eligible(rule: Rule, as_of: datetime) -> ColumnElement[bool]:
    """Members a segment may hold: not erased, and matching the rule."""
    return and_(profiles.c.erased_at.is_(None), to_sql(rule, as_of))
