"""The JSON Schema of a segment rule (OpenAPI `SegmentRule`) says what the rule parser takes:
the same fields with the same ops, values of each field's type, and examples that parse."""

from __future__ import annotations

from typing import Any

import jsonschema
from loyalty_segmenter.domain.rules import FIELDS, OPS, parse_rule
from loyalty_segmenter.entrypoints.rule_schema import SegmentRule

SCHEMA = SegmentRule.model_json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
# one value each field type takes, for a comparison
SAMPLE = {
    "integer": 3,
    "number": 0.5,
    "datetime": "2026-03-02T04:00:00+08:00",
    "string": "gold",
    "tags": "tea",
    "boolean": True,
}


def _value(field: str, op: str) -> Any:
    spec = FIELDS[field]
    one = spec.values[0] if spec.type == "enum" else SAMPLE[spec.type]
    if op == "between":
        return [one, one]
    if op == "in":
        return [one]
    return one


def _pairs_in_schema() -> set[tuple[str, str]]:
    pairs = set()
    for name, definition in SCHEMA["$defs"].items():
        if not name.endswith("Condition"):
            continue
        field, op = definition["properties"]["field"], definition["properties"]["op"]
        fields = field.get("enum") or [field["const"]]
        ops = op.get("enum") or [op["const"]]
        pairs |= {(f, o) for f in fields for o in ops}
    return pairs


def test_the_schema_has_every_field_with_exactly_the_ops_the_parser_takes():
    parser = {(name, op) for name, spec in FIELDS.items() for op in OPS[spec.type]}
    assert _pairs_in_schema() == parser


def test_every_condition_the_schema_takes_parses():
    for field, op in sorted(_pairs_in_schema()):
        rule = {"field": field, "op": op, "value": _value(field, op)}
        VALIDATOR.validate(rule)
        parse_rule(rule)


def test_the_examples_and_nested_rules_are_valid_and_parse():
    nested = {"any": [{"not": {"all": [{"field": "registered", "op": "eq", "value": True}]}}]}
    for rule in [*SCHEMA["$defs"]["SegmentRule"]["examples"], nested]:
        VALIDATOR.validate(rule)
        parse_rule(rule)


def test_the_schema_refuses_what_the_parser_refuses_on_its_shape():
    for rule in (
        {"field": "nope", "op": "eq", "value": 1},  # unknown field
        {"field": "spend_minor", "op": "contains", "value": 1},  # op of another type
        {"field": "lifecycle_stage", "op": "eq", "value": "dormant"},  # not a stage
        {"all": []},  # an empty list
        {"all": [{"field": "registered", "op": "eq", "value": True}], "any": []},  # two kinds
        {"field": "spend_minor", "op": "between", "value": [1]},  # not [low, high]
    ):
        assert not VALIDATOR.is_valid(rule), rule
