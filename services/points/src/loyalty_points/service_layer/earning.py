"""Applies member and order events to the ledger, a whole batch at a time."""

from __future__ import annotations

from typing import Any

from loyalty_shared.events import Event
from loyalty_shared.events.members import MemberRegistered
from loyalty_shared.service import Runtime
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from ..adapters.ledger_store import write_effects
from ..domain.ledger import EarningRules, Effects
from ..domain.signup import credit_signup_bonus


def _ulid() -> str:
    return str(ULID())


async def on_member_registered(
    runtime: Runtime, conn: AsyncConnection, events: list[Event[Any]]
) -> None:
    rules = EarningRules()
    now = runtime.clock.now()
    effects = Effects()
    for event in events:
        data: MemberRegistered = event.data
        credit_signup_bonus(
            effects,
            member_id=data.member_id,
            event_id=event.id,
            registered_at=data.registered_at,
            recorded_at=now,
            rules=rules,
            lot_id=_ulid(),
            entry_id=_ulid(),
        )
    await write_effects(conn, effects, now)
