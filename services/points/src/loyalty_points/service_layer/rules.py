"""Earning rules as data: list, change, and simulate an event rule by rule without writing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loyalty_shared.errors import NotFound, Unprocessable
from loyalty_shared.events import Event, new_event_id, spec_for
from loyalty_shared.service import Runtime
from pydantic import ValidationError

from ..adapters.ledger_store import load_rulebook, save_rule
from ..domain.rules import DESCRIPTIONS, PARAMS, Rule
from .earning import MEMBER_TYPES, ORDER_TYPES, apply_in_memory

SIMULATED_TYPES = tuple(t for t in MEMBER_TYPES + ORDER_TYPES)


def rule_view(rule: Rule) -> dict[str, Any]:
    return {
        "code": rule.code,
        "enabled": rule.enabled,
        "params": rule.params.model_dump(mode="json"),
        "description": DESCRIPTIONS.get(rule.code, ""),
    }


async def list_rules(runtime: Runtime) -> list[dict[str, Any]]:
    async with runtime.engine.connect() as conn:
        book = await load_rulebook(conn)
    return [rule_view(book.rules[code]) for code in PARAMS]


async def change_rule(
    runtime: Runtime, code: str, *, enabled: bool | None, params: dict[str, Any] | None
) -> dict[str, Any]:
    if code not in PARAMS:
        raise NotFound(f"no earning rule '{code}'", rules=sorted(PARAMS))
    async with runtime.transaction() as conn:
        book = await load_rulebook(conn)
        current = book.rules[code]
        try:
            # strict like the body they came in (loyalty_shared.api_types): `true` is no count
            new_params = (
                PARAMS[code].model_validate(params, strict=True)
                if params is not None
                else current.params
            )
        except ValidationError as exc:
            raise Unprocessable(
                "validation_error",
                f"invalid parameters for rule '{code}'",
                errors=[
                    {"loc": ["body", "params", *e["loc"]], "msg": e["msg"]} for e in exc.errors()
                ],
            ) from exc
        rule = Rule(code, current.enabled if enabled is None else enabled, new_params)
        await save_rule(conn, rule, runtime.clock.now())
    return rule_view(rule)


async def simulate(
    runtime: Runtime, event_type: str, data: dict[str, Any], time: datetime | None
) -> dict[str, Any]:
    """Apply the event exactly as the consumer would, report, and roll everything back."""
    if event_type not in SIMULATED_TYPES:
        raise Unprocessable(
            "validation_error",
            f"cannot simulate '{event_type}'",
            errors=[{"loc": ["body", "event", "type"], "msg": f"one of {list(SIMULATED_TYPES)}"}],
        )
    try:
        payload = spec_for(event_type).model.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(
            "validation_error",
            f"the data is not a valid {event_type}",
            errors=[
                {"loc": ["body", "event", "data", *e["loc"]], "msg": e["msg"]} for e in exc.errors()
            ],
        ) from exc
    now = runtime.clock.now()
    event = Event(
        type=event_type,
        data=payload,
        subject=getattr(payload, "member_id", None),
        source="loyalty/points/simulation",
        time=time or now,
        id=new_event_id(),
    )
    async with runtime.engine.connect() as conn:
        transaction = await conn.begin()
        try:
            batch = await apply_in_memory(conn, [event], now)
            result = _explain(batch, event)
        except ValidationError as exc:
            # a value the rules cannot take (a tier multiplier beyond the tier rule's range):
            # the consumer dead-letters such an event; a simulation answers why
            raise Unprocessable(
                "validation_error",
                f"the earning rules cannot take this {event_type}",
                errors=[{"loc": ["body", "event", "data"], "msg": e["msg"]} for e in exc.errors()],
            ) from exc
        finally:
            await transaction.rollback()
    return result


def _explain(batch: Any, event: Event[Any]) -> dict[str, Any]:
    member_id = getattr(event.data, "member_id", None)
    account = batch.accounts.get(member_id) if member_id else None
    order_id = getattr(event.data, "order_id", None)
    order = batch.orders.get(order_id) if order_id else None
    changes = []
    for op in account.operations if account else []:
        for entry in op.entries:
            changes.append(
                {
                    "kind": entry.kind,
                    "bucket": entry.bucket,
                    "points": entry.points,
                    "rule": entry.rule,
                    "reason": entry.reason,
                    "capped_points": entry.capped_points,
                    "calculation": entry.calculation.as_json() if entry.calculation else None,
                    "available_at": entry.available_at,
                    "expires_at": entry.expires_at,
                }
            )
    return {
        "type": event.type,
        "member_id": member_id,
        "points": sum(c["points"] for c in changes),
        "changes": changes,
        "steps": order.steps if order and event.type == "order.paid" else [],
        "available_after": account.available if account else 0,
        "pending_after": account.pending if account else 0,
    }
