"""Contract tests of the event payloads: registry, examples, committed JSON Schemas, no PII."""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from loyalty_shared.events import (
    COUPONS,
    MEMBERS,
    NOTIFICATIONS,
    ORDERS,
    POINTS,
    REGISTRY,
    SEGMENTS,
    EventData,
    decode_event,
    make_event,
    types_on,
)
from loyalty_shared.events import schemas as schema_export
from loyalty_shared.events.members import MemberRegistered
from loyalty_shared.events.orders import OrderPaid, OrderRefunded
from loyalty_shared.events.points import PointsDebited
from pydantic import BaseModel, ValidationError

# The topic table of contract.md section 2, written out by hand on purpose.
CONTRACT: dict[str, tuple[str, ...]] = {
    MEMBERS: (
        "member.registered",
        "member.updated",
        "member.erased",
        "member.checked_in",
        "member.card_issued",
        "member.tier_changed",
        "member.referral_qualified",
        # Added after contract.md section 2 was written (additive): feedback.
        "member.survey_answered",
        "member.complaint_opened",
        "member.complaint_status_changed",
        # Added with the points service's ladder (contract §5: rules show the ladder as it
        # stands now): about no member, keyed "tier-ladder".
        "member.tier_ladder_changed",
    ),
    ORDERS: (
        "order.placed",
        "order.paid",
        "order.shipped",
        "order.delivered",
        "order.cancelled",
        "order.refunded",
    ),
    POINTS: (
        "points.credited",
        "points.released",
        "points.debited",
        "points.reversed",
        "points.expired",
        "points.expiring_soon",
        "points.adjusted",
        "stored_value.topped_up",
        "stored_value.spent",
        "stored_value.refunded",
    ),
    COUPONS: (
        "coupon.issued",
        "coupon.redeemed",
        "coupon.released",
        "coupon.expired",
        "coupon.expiring_soon",
        # Added after contract.md section 2 was written (additive): campaign control groups.
        "coupon.holdout_assigned",
    ),
    SEGMENTS: ("segment.entered", "segment.exited", "member.lifecycle_changed"),
    NOTIFICATIONS: ("notification.sent", "notification.failed", "notification.suppressed"),
}
EXPECTED_TOPIC = {type_: topic for topic, types in CONTRACT.items() for type_ in types}
ALL_TYPES = sorted(EXPECTED_TOPIC)

PERSONAL_FIELDS = {"phone", "email", "name", "birthday"}


def _model(type_: str) -> type[EventData]:
    model: type[EventData] = REGISTRY[type_].model
    return model


def _examples(type_: str) -> list[dict[str, Any]]:
    extra = _model(type_).model_config.get("json_schema_extra")
    assert isinstance(extra, dict), f"{type_} has no json_schema_extra"
    examples = extra.get("examples")
    assert isinstance(examples, list)
    assert all(isinstance(example, dict) for example in examples)
    return [dict(example) for example in examples if isinstance(example, dict)]


def _field_names(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    """Field names of a model and of every model nested in it."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for field in model.model_fields.values():
        for nested in _nested_models(field.annotation):
            names |= _field_names(nested, seen)
    return names


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found += _nested_models(arg)
    return found


def _property_names(schema: Any) -> set[str]:
    """Every property name anywhere in a JSON Schema (including $defs)."""
    names: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                names |= set(value)
            names |= _property_names(value)
    elif isinstance(schema, list):
        for item in schema:
            names |= _property_names(item)
    return names


def test_every_contract_type_is_registered_on_its_topic() -> None:
    assert sorted(REGISTRY) == ALL_TYPES
    for type_, topic in EXPECTED_TOPIC.items():
        spec = REGISTRY[type_]
        assert spec.topic == topic, type_
        assert spec.version == 1
        assert spec.dataschema == f"urn:loyalty:schema:{type_}:1"
    for topic, types in CONTRACT.items():
        assert types_on(topic) == sorted(types)


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_payload_model_keeps_the_base_config_and_documents_itself(type_: str) -> None:
    model = _model(type_)
    assert model.model_config.get("extra") == "ignore"
    assert model.model_config.get("frozen") is True
    assert model.__doc__ and model.__doc__.strip()
    assert _examples(type_), f"{type_} has no example payload"


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_examples_validate_and_round_trip_through_the_envelope(type_: str) -> None:
    for example in _examples(type_):
        data = _model(type_).model_validate(example)
        subject = getattr(data, "member_id", None)
        key = None if subject else getattr(data, "order_id", None)
        event = make_event(
            type_,
            data,
            subject=subject,
            source="loyalty/test",
            time=datetime(2026, 11, 24, 8, 0, tzinfo=UTC),
            key=key,
        )
        decoded = decode_event(event.encode())
        assert decoded.type == type_
        assert decoded.id == event.id
        assert decoded.subject == subject
        assert decoded.data == data
        assert decoded.topic == EXPECTED_TOPIC[type_]


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_no_personal_data_in_any_payload(type_: str) -> None:
    model = _model(type_)
    fields = _field_names(model) | _property_names(model.model_json_schema())
    assert not fields & PERSONAL_FIELDS, f"{type_} carries {fields & PERSONAL_FIELDS}"
    for field in fields:
        assert not any(word in field for word in ("phone", "email", "birthday")), field
        assert not field.endswith("_name"), field


NOT_ABOUT_A_MEMBER = {"member.tier_ladder_changed"}


@pytest.mark.parametrize("type_", sorted(set(ALL_TYPES) - NOT_ABOUT_A_MEMBER))
def test_member_related_payloads_name_the_member(type_: str) -> None:
    fields = _model(type_).model_fields
    assert "member_id" in fields
    if type_.startswith("order."):
        assert not fields["member_id"].is_required(), "guest orders have no member"
    else:
        assert fields["member_id"].is_required(), type_


def test_member_registered_keeps_its_original_fields() -> None:
    original = {
        "member_id",
        "card_no",
        "tier",
        "referral_code",
        "referred_by",
        "store_id",
        "channel",
        "locale",
        "timezone",
        "consents",
        "registered_at",
    }
    fields = MemberRegistered.model_fields
    assert original <= set(fields)
    assert all(not fields[name].is_required() for name in set(fields) - original)
    assert {name for name in original if fields[name].is_required()} == {
        "member_id",
        "card_no",
        "referral_code",
        "registered_at",
    }


def test_order_and_points_invariants_are_enforced() -> None:
    paid = _examples("order.paid")[0]
    with pytest.raises(ValidationError):
        OrderPaid.model_validate({**paid, "paid_minor": paid["total_minor"] + 1})
    with pytest.raises(ValidationError):
        OrderPaid.model_validate({**paid, "occurred_at": "2026-11-24T10:15:30"})
    refund = _examples("order.refunded")[0]
    with pytest.raises(ValidationError):
        OrderRefunded.model_validate({**refund, "refunded_total_minor": refund["paid_minor"] + 1})
    assert not OrderRefunded.model_validate(refund).fully_refunded
    full = {**refund, "amount_minor": 4170, "refunded_total_minor": 4170}
    assert OrderRefunded.model_validate(full).fully_refunded
    debit = _examples("points.debited")[0]
    with pytest.raises(ValidationError):
        PointsDebited.model_validate({**debit, "points": debit["points"] + 1})


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    paid = _examples("order.paid")[0]
    data = OrderPaid.model_validate({**paid, "added_in_a_later_version": 1})
    assert data == OrderPaid.model_validate(paid)


def test_exported_schemas_carry_the_contract_metadata() -> None:
    files = schema_export.render()
    assert set(files) == {f"{type_}.json" for type_ in ALL_TYPES} | {"index.json"}
    for type_ in ALL_TYPES:
        schema = json.loads(files[f"{type_}.json"])
        assert schema["$id"] == f"urn:loyalty:schema:{type_}:1"
        assert schema["title"] == type_
        assert schema["x-topic"] == EXPECTED_TOPIC[type_]
        assert schema["x-version"] == 1
        assert schema["examples"]
    index = json.loads(files["index.json"])["types"]
    assert index["order.paid"] == {
        "dataschema": "urn:loyalty:schema:order.paid:1",
        "file": "order.paid.json",
        "topic": ORDERS,
        "version": 1,
    }


def test_committed_schemas_match_the_models() -> None:
    assert schema_export.check(schema_export.DEFAULT_DIR) == []


def test_check_reports_changed_missing_and_extra_files() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "schemas"
        shutil.copytree(schema_export.DEFAULT_DIR, copy)
        assert schema_export.check(copy) == []

        changed = copy / "order.paid.json"
        schema = json.loads(changed.read_text(encoding="utf-8"))
        schema["properties"].pop("member_tier")
        changed.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (copy / "coupon.issued.json").unlink()
        (copy / "order.archived.json").write_text("{}\n", encoding="utf-8")

        assert sorted(schema_export.check(copy)) == [
            "differs: order.paid.json",
            "extra: order.archived.json",
            "missing: coupon.issued.json",
        ]
        assert schema_export.main(["--check", "--dir", str(copy)]) == 1

        schema_export.export(copy)
        assert schema_export.check(copy) == ["extra: order.archived.json"]
        (copy / "order.archived.json").unlink()
        assert schema_export.main(["--check", "--dir", str(copy)]) == 0
