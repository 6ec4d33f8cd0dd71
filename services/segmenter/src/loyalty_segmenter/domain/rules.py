"""The segment rule language: parse and validate JSON rules, and evaluate them on one profile.

    rule := {"all": [rule, ...]} | {"any": [rule, ...]} | {"not": rule}
          | {"field": <name>, "op": <op>, "value": <value>}

Two-valued logic: a comparison on a field that has no value (a prospect's last_order_at, an
unscored rfm.r) is false, `ne` is exactly `not eq`, and `not` is the exact complement, so a
rule and its `not` always split the members in two. The SQL compiler (adapters/rule_sql.py)
follows the same semantics; a property test holds them to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from .lifecycle import BUYER_WEIGHTS, STAGES

FieldType = Literal["integer", "number", "datetime", "enum", "string", "tags", "boolean"]
Op = Literal["eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "between"]

OPS: dict[FieldType, frozenset[str]] = {
    "integer": frozenset({"eq", "ne", "lt", "lte", "gt", "gte", "in", "between"}),
    "number": frozenset({"eq", "ne", "lt", "lte", "gt", "gte", "in", "between"}),
    "datetime": frozenset({"eq", "ne", "lt", "lte", "gt", "gte", "between"}),
    "enum": frozenset({"eq", "ne", "in"}),
    "string": frozenset({"eq", "ne", "in"}),
    "tags": frozenset({"contains"}),
    "boolean": frozenset({"eq", "ne"}),
}
ALL_OPS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "between")
MAX_DEPTH = 12
MAX_NODES = 200
MAX_IN_VALUES = 500


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    description: str
    values: tuple[str, ...] = ()  # the allowed values of an enum
    time_relative: bool = False  # its value changes with the clock alone
    rfm_score: bool = False  # recomputed over the whole base by the job


FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in (
        FieldSpec("orders_count", "integer", "paid orders, not cancelled or fully refunded"),
        FieldSpec("orders_365d", "integer", "paid orders in the last 365 days"),
        FieldSpec("first_order_at", "datetime", "time of the first paid order"),
        FieldSpec("last_order_at", "datetime", "time of the last paid order"),
        FieldSpec("spend_minor", "integer", "lifetime paid amount less refunds, minor units"),
        FieldSpec("spend_365d_minor", "integer", "paid less refunds in the last 365 days"),
        FieldSpec(
            "rfm.recency_days",
            "integer",
            "whole days since the last paid order, at evaluation time",
            time_relative=True,
        ),
        FieldSpec("rfm.r", "integer", "recency score 1-5 (5 = most recent)", rfm_score=True),
        FieldSpec("rfm.f", "integer", "frequency score 1-5 (5 = most orders)", rfm_score=True),
        FieldSpec("rfm.m", "integer", "monetary score 1-5 (5 = highest spend)", rfm_score=True),
        FieldSpec("lifecycle_stage", "enum", "lifecycle stage", values=STAGES),
        FieldSpec("buyer_weight", "enum", "by paid orders in 365 days", values=BUYER_WEIGHTS),
        FieldSpec("preference_tags", "tags", "categories with a large share of spend"),
        FieldSpec("churn_risk", "number", "0-1; no value without a paid order"),
        FieldSpec("tier", "string", "the member's tier, e.g. bronze, silver, gold"),
        FieldSpec("points_available", "integer", "available points (may be negative)"),
        FieldSpec("registered", "boolean", "the segmenter has seen member.registered"),
    )
}


# --- the tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class All:
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class AnyOf:
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Not:
    rule: Rule


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any  # normalised: int, float, datetime, str, bool, tuple for in/between


Rule = All | AnyOf | Not | Condition


class RuleError(ValueError):
    """The rule is not valid; `errors` are [{loc, msg}] with loc a path into the rule."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


# --- parsing -------------------------------------------------------------------------------


class _Parser:
    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []
        self.nodes = 0

    def fail(self, loc: list[Any], msg: str) -> None:
        self.errors.append({"loc": loc, "msg": msg})

    def rule(self, raw: Any, loc: list[Any], depth: int) -> Rule | None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            if self.nodes == MAX_NODES + 1:
                self.fail(loc, f"a rule may hold at most {MAX_NODES} parts")
            return None
        if depth > MAX_DEPTH:
            self.fail(loc, f"rules may nest at most {MAX_DEPTH} levels deep")
            return None
        if not isinstance(raw, dict):
            self.fail(
                loc, "a rule is an object: {all|any: [...]}, {not: {...}} or {field, op, value}"
            )
            return None
        kinds = [k for k in ("all", "any", "not", "field") if k in raw]
        if len(kinds) != 1:
            self.fail(loc, "a rule has exactly one of 'all', 'any', 'not' or 'field'")
            return None
        kind = kinds[0]
        allowed = {"field", "op", "value"} if kind == "field" else {kind}
        for extra in sorted(set(raw) - allowed):
            self.fail([*loc, extra], f"unexpected key '{extra}' in a '{kind}' rule")
        if kind in ("all", "any"):
            items = raw[kind]
            if not isinstance(items, list) or not items:
                self.fail([*loc, kind], f"'{kind}' takes a non-empty list of rules")
                return None
            parsed = [self.rule(item, [*loc, kind, i], depth + 1) for i, item in enumerate(items)]
            if any(p is None for p in parsed):
                return None
            children = tuple(p for p in parsed if p is not None)
            return All(children) if kind == "all" else AnyOf(children)
        if kind == "not":
            inner = self.rule(raw["not"], [*loc, "not"], depth + 1)
            return Not(inner) if inner is not None else None
        return self.condition(raw, loc)

    def condition(self, raw: dict[str, Any], loc: list[Any]) -> Condition | None:
        name, op = raw.get("field"), raw.get("op")
        spec = FIELDS.get(name) if isinstance(name, str) else None
        if spec is None:
            self.fail([*loc, "field"], f"unknown field {name!r}; fields: {', '.join(FIELDS)}")
            return None
        if not isinstance(op, str) or op not in ALL_OPS:
            self.fail([*loc, "op"], f"unknown op {op!r}; ops: {', '.join(ALL_OPS)}")
            return None
        if op not in OPS[spec.type]:
            self.fail(
                [*loc, "op"],
                f"op '{op}' does not apply to {spec.type} field '{spec.name}'; "
                f"use one of {', '.join(sorted(OPS[spec.type]))}",
            )
            return None
        if "value" not in raw:
            self.fail([*loc, "value"], "a condition needs a 'value'")
            return None
        value = self.value(spec, op, raw["value"], [*loc, "value"])
        return None if value is _INVALID else Condition(spec.name, op, value)

    def value(self, spec: FieldSpec, op: str, raw: Any, loc: list[Any]) -> Any:
        if op in ("in", "between"):
            if not isinstance(raw, list):
                self.fail(loc, f"'{op}' takes a list")
                return _INVALID
            if op == "between" and len(raw) != 2:
                self.fail(loc, "'between' takes [low, high] (both included)")
                return _INVALID
            if op == "in" and not 1 <= len(raw) <= MAX_IN_VALUES:
                self.fail(loc, f"'in' takes 1 to {MAX_IN_VALUES} values")
                return _INVALID
            values = [self.scalar(spec, item, [*loc, i]) for i, item in enumerate(raw)]
            if any(v is _INVALID for v in values):
                return _INVALID
            if op == "between" and values[0] > values[1]:
                self.fail(loc, "'between' needs low <= high")
                return _INVALID
            return tuple(values)
        scalar_spec = (
            FieldSpec(spec.name, "string", spec.description) if spec.type == "tags" else spec
        )
        return self.scalar(scalar_spec, raw, loc)

    def scalar(self, spec: FieldSpec, raw: Any, loc: list[Any]) -> Any:
        kind = spec.type
        if kind == "integer":
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.fail(loc, f"'{spec.name}' takes whole numbers, not {raw!r}")
                return _INVALID
            return raw
        if kind == "number":
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                self.fail(loc, f"'{spec.name}' takes numbers, not {raw!r}")
                return _INVALID
            return float(raw)
        if kind == "boolean":
            if not isinstance(raw, bool):
                self.fail(loc, f"'{spec.name}' takes true or false, not {raw!r}")
                return _INVALID
            return raw
        if kind == "datetime":
            try:
                at = datetime.fromisoformat(raw) if isinstance(raw, str) else None
            except ValueError:
                at = None
            if at is None or at.tzinfo is None:
                self.fail(loc, f"'{spec.name}' takes RFC 3339 times with an offset, not {raw!r}")
                return _INVALID
            return at
        if not isinstance(raw, str) or not raw or len(raw) > 200:
            self.fail(loc, f"'{spec.name}' takes a string of 1 to 200 characters, not {raw!r}")
            return _INVALID
        if kind == "enum" and raw not in spec.values:
            self.fail(loc, f"{raw!r} is not a {spec.name}; one of {', '.join(spec.values)}")
            return _INVALID
        return raw


_INVALID = object()


def parse_rule(raw: Any, loc: list[Any] | None = None) -> Rule:
    """Validate a JSON rule; raise RuleError naming every problem found."""
    parser = _Parser()
    rule = parser.rule(raw, list(loc or []), 1)
    if parser.errors or rule is None:
        raise RuleError(parser.errors or [{"loc": loc or [], "msg": "invalid rule"}])
    return rule


def to_json(rule: Rule) -> dict[str, Any]:
    """The canonical JSON of a parsed rule (times in UTC RFC 3339)."""
    if isinstance(rule, All):
        return {"all": [to_json(r) for r in rule.rules]}
    if isinstance(rule, AnyOf):
        return {"any": [to_json(r) for r in rule.rules]}
    if isinstance(rule, Not):
        return {"not": to_json(rule.rule)}

    def plain(v: Any) -> Any:
        return v.isoformat() if isinstance(v, datetime) else v

    value = [plain(v) for v in rule.value] if isinstance(rule.value, tuple) else plain(rule.value)
    return {"field": rule.field, "op": rule.op, "value": value}


def fields_of(rule: Rule) -> set[str]:
    if isinstance(rule, All | AnyOf):
        return set().union(*(fields_of(r) for r in rule.rules))
    if isinstance(rule, Not):
        return fields_of(rule.rule)
    return {rule.field}


def is_time_relative(rule: Rule) -> bool:
    return any(FIELDS[f].time_relative for f in fields_of(rule))


def uses_rfm_scores(rule: Rule) -> bool:
    return any(FIELDS[f].rfm_score for f in fields_of(rule))


# --- evaluation on one profile -------------------------------------------------------------


def evaluate(rule: Rule, values: Mapping[str, Any]) -> bool:
    if isinstance(rule, All):
        return all(evaluate(r, values) for r in rule.rules)
    if isinstance(rule, AnyOf):
        return any(evaluate(r, values) for r in rule.rules)
    if isinstance(rule, Not):
        return not evaluate(rule.rule, values)
    return _compare(rule, values.get(rule.field))


def _compare(cond: Condition, actual: Any) -> bool:
    op, expected = cond.op, cond.value
    if op == "ne":
        return not _compare(Condition(cond.field, "eq", expected), actual)
    if actual is None:
        return False
    if op == "eq":
        return bool(actual == expected)
    if op == "lt":
        return bool(actual < expected)
    if op == "lte":
        return bool(actual <= expected)
    if op == "gt":
        return bool(actual > expected)
    if op == "gte":
        return bool(actual >= expected)
    if op == "in":
        return actual in expected
    if op == "between":
        return bool(expected[0] <= actual <= expected[1])
    if op == "contains":
        return expected in actual
    raise ValueError(f"unknown op {op}")
