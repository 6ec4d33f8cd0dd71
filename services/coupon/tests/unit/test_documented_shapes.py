"""The OpenAPI document's shapes of a campaign trigger and a coupon template say what the
service's own checks take (`trigger_problems`, `template_problems`)."""

from __future__ import annotations

import jsonschema
from loyalty_coupon.domain.campaigns import TRIGGER_PARAMS, trigger_problems
from loyalty_coupon.domain.templates import template_problems
from loyalty_coupon.entrypoints.catalog import TemplateCreate, Trigger

TRIGGERS = jsonschema.Draft202012Validator(Trigger.model_json_schema())
TEMPLATES = jsonschema.Draft202012Validator(TemplateCreate.model_json_schema())


def _trigger(kind: str) -> dict:
    trigger: dict = {"type": kind}
    for name, (_, minimum) in TRIGGER_PARAMS[kind].items():
        trigger[name] = minimum if minimum is not None else "vip"
    return trigger


def test_a_trigger_of_every_type_is_in_the_schema_and_passes_the_check():
    for kind in TRIGGER_PARAMS:
        trigger = _trigger(kind)
        TRIGGERS.validate(trigger)
        assert trigger_problems(trigger) == []


def test_the_trigger_schema_refuses_what_the_check_refuses():
    for trigger in (
        {"type": "nope"},
        {"type": "nth_order"},  # n missing
        {"type": "nth_order", "n": 1},  # below its minimum
        {"type": "segment.entered", "segment_code": " "},  # blank
        {"type": "birthday", "days": 3},  # a parameter of another type
    ):
        assert trigger_problems(trigger), trigger
        assert not TRIGGERS.is_valid(trigger), trigger


def test_the_template_schema_states_the_terms_across_fields():
    base = {"code": "T-1", "name": "t", "valid_days": 30}
    valid = [
        {**base, "kind": "amount_off", "value": 500},
        {**base, "kind": "percent_off", "value": 15, "max_discount_minor": 3000},
        {**base, "kind": "free_shipping"},
        {**base, "kind": "gift", "gift_sku": "mug-01"},
        {
            "code": "T-2",
            "name": "t",
            "kind": "gift",
            "gift_sku": "mug",
            "ends_at": "2027-01-01T00:00:00+08:00",
        },
        *TemplateCreate.model_json_schema()["examples"],
    ]
    invalid = [
        {**base, "kind": "amount_off"},  # no value
        {**base, "kind": "percent_off", "value": 101},
        {**base, "kind": "free_shipping", "value": 5},
        {**base, "kind": "amount_off", "value": 5, "max_discount_minor": 10},  # cap: percent only
        {**base, "kind": "gift"},  # no gift_sku
        {**base, "kind": "amount_off", "value": 5, "gift_sku": "mug"},
        {"code": "T-3", "name": "t", "kind": "free_shipping"},  # neither valid_days nor ends_at
        {**base, "kind": "free_shipping", "ends_at": "2027-01-01T00:00:00+08:00"},  # both
    ]
    for body in valid:
        assert TEMPLATES.is_valid(body), body
        assert template_problems(TemplateCreate.model_validate(body).to_domain()) == [], body
    for body in invalid:
        assert not TEMPLATES.is_valid(body), body
        assert template_problems(TemplateCreate.model_validate(body).to_domain()), body
