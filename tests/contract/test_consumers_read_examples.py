"""Every consuming service applies every example of every event type it consumes, through its
real handlers on its real database, without an error (the transaction is rolled back)."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import pytest
from loyalty_shared.events import REGISTRY, make_event
from loyalty_shared.kafka import apply_events
from loyalty_shared.testing import DatabaseFactory, start_service

SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]


def examples_of(event_type: str) -> list[dict]:
    schema = REGISTRY[event_type].model.model_json_schema()
    return schema.get("examples", [])


def test_every_event_type_has_an_example():
    assert [t for t in REGISTRY if not examples_of(t)] == []


@pytest.mark.parametrize("name", SERVICES)
async def test_consumers_apply_the_examples(name: str, databases: DatabaseFactory):
    definition = importlib.import_module(f"loyalty_{name}.bootstrap").definition()
    if definition.handlers is None:
        pytest.skip(f"the {name} service consumes nothing yet")
    service = await start_service(
        definition,
        database_url=await databases.fresh(f"ex_{name}"),
        bootstrap="127.0.0.1:9",
        background=False,
    )
    try:
        runtime = service.runtime
        handlers = definition.handlers(runtime)
        consumed = sorted(t for t in handlers.by_type if REGISTRY[t].topic in definition.consumes)
        assert consumed, f"{name} registers handlers but consumes none of their topics"
        for event_type in consumed:
            for example in examples_of(event_type):
                data = REGISTRY[event_type].model.model_validate(example)
                event = make_event(
                    event_type,
                    data,
                    subject=getattr(data, "member_id", None),
                    source="contract-test",
                    time=datetime.now(UTC),
                )
                async with runtime.engine.connect() as conn:
                    transaction = await conn.begin()
                    try:
                        applied = await apply_events(
                            conn, runtime.consumer_group, handlers, [event]
                        )
                    finally:
                        await transaction.rollback()
                assert [e.id for e in applied] == [event.id], event_type
    finally:
        await service.stop()
