"""The JSON Schema of a segment rule, as the OpenAPI document declares it: what
`domain.rules.parse_rule` takes, built from the same tables (`FIELDS`, `OPS`).

    rule := {"all": [rule, ...]} | {"any": [rule, ...]} | {"not": rule}
          | {"field": <name>, "op": <op>, "value": <value>}

A condition is one of a few shapes per field type: a comparison (`eq`, `lt`, ... with one
value), `in` (a list of 1 to 500 values) and `between` (`[low, high]`, both included), with the
fields of that type and the values they take (an enum field's own values). The models only
describe: the parser validates every rule and names each problem at its place in the rule
(422 `validation_error`). What the schema cannot say: at most 12 levels and 200 parts, and
`between` needs low <= high.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from ..domain.rules import FIELDS, MAX_DEPTH, MAX_IN_VALUES, MAX_NODES, OPS, FieldSpec, FieldType

_LIST_OPS = ("in", "between")
_TEXT = Annotated[str, Field(min_length=1, max_length=200)]
_VALUES: dict[str, Any] = {
    "integer": int,
    "number": float,
    "datetime": Annotated[datetime, Field(description="RFC 3339 with an offset")],
    "string": _TEXT,
    "tags": _TEXT,
    "boolean": bool,
}


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace(".", "_").split("_"))


def _literal(values: tuple[str, ...] | list[str]) -> Any:
    return Literal[tuple(values)]  # type: ignore[valid-type]


def _shapes(title: str, names: list[str], ops: frozenset[str], value: Any) -> list[type]:
    """A condition model per op group over the fields `names`, taking `value`s."""
    field = (_literal(names), Field(description="a profile field; see GET /v1/segments:fields"))
    shapes: list[type] = []
    scalar = sorted(ops - set(_LIST_OPS))
    if scalar:
        shapes.append(
            create_model(
                f"{title}Condition",
                __base__=_Node,
                __doc__=f"Compare a field with one value ({', '.join(scalar)}).",
                field=field,
                op=(_literal(scalar), ...),
                value=(value, ...),
            )
        )
    if "in" in ops:
        shapes.append(
            create_model(
                f"{title}InCondition",
                __base__=_Node,
                __doc__="The field's value is one of these.",
                field=field,
                op=(_literal(["in"]), ...),
                value=(list[value], Field(min_length=1, max_length=MAX_IN_VALUES)),
            )
        )
    if "between" in ops:
        shapes.append(
            create_model(
                f"{title}BetweenCondition",
                __base__=_Node,
                __doc__="The field's value lies in [low, high], both included (low <= high).",
                field=field,
                op=(_literal(["between"]), ...),
                value=(list[value], Field(min_length=2, max_length=2)),
            )
        )
    return shapes


def _conditions() -> list[type]:
    shapes: list[type] = []
    by_type: dict[FieldType, list[FieldSpec]] = {}
    for spec in FIELDS.values():
        by_type.setdefault(spec.type, []).append(spec)
    for kind, specs in by_type.items():
        if kind == "enum":  # each enum field takes its own values
            for spec in specs:
                shapes += _shapes(_camel(spec.name), [spec.name], OPS[kind], _literal(spec.values))
            continue
        shapes += _shapes(_camel(kind), [s.name for s in specs], OPS[kind], _VALUES[kind])
    return shapes


CONDITIONS = tuple(_conditions())


class AllRule(_Node):
    """Every rule of the list holds."""

    all: list[SegmentRule] = Field(min_length=1, max_length=MAX_NODES)


class AnyRule(_Node):
    """At least one rule of the list holds."""

    any: list[SegmentRule] = Field(min_length=1, max_length=MAX_NODES)


class NotRule(_Node):
    """The rule does not hold (the exact complement: a rule and its `not` split the members)."""

    not_: SegmentRule = Field(alias="not")


class SegmentRule(RootModel[Union[(AllRule, AnyRule, NotRule, *CONDITIONS)]]):  # type: ignore[misc,valid-type]
    __doc__ = (
        f"A segment rule: `all`, `any` or `not` over rules, or a condition on a profile field "
        f"(`GET /v1/segments:fields` lists the fields, their types and ops). At most "
        f"{MAX_DEPTH} levels deep and {MAX_NODES} parts; unknown fields or ops, and values of "
        "the wrong type, are a 422 `validation_error` naming the place in the rule."
    )
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "all": [
                        {"field": "lifecycle_stage", "op": "eq", "value": "easy_winback"},
                        {"field": "spend_minor", "op": "gte", "value": 100000},
                    ]
                }
            ]
        }
    )


for _model in (AllRule, AnyRule, NotRule):
    _model.model_rebuild()
