"""Test support for the notifier: a stand-in member API, scripted providers, a harness around
the running service, and event builders. Used by the service's own tests and the platform's."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import httpx
from loyalty_shared.clock import FixedClock
from loyalty_shared.events import Event, make_event
from loyalty_shared.kafka import apply_events
from loyalty_shared.testing import RunningService, outbox_events
from sqlalchemy import text

from .adapters.providers import OutgoingMessage, ProviderError
from .config import NotifierSettings
from .service_layer.context import Notifier

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
_ids = itertools.count(1)


class FakeMembers:
    """The member service's two read endpoints, answered from memory."""

    def __init__(self) -> None:
        self.members: dict[str, dict[str, Any]] = {}
        self.identities: dict[str, list[dict[str, Any]]] = {}
        self.down = False
        self.requests = 0

    def add(
        self,
        member_id: str,
        *,
        phone: str | None = "+8613800138000",
        email: str | None = "ada@example.com",
        name: str | None = "Ada",
        wechat: str | None = "o-wechat-openid",
        push: str | None = "push-token",
        locale: str = "zh-CN",
        timezone: str = "Asia/Shanghai",
        consents: dict[str, bool] | None = None,
    ) -> str:
        self.members[member_id] = {
            "member_id": member_id,
            "phone": phone,
            "email": email,
            "name": name,
            "locale": locale,
            "timezone": timezone,
            "tier": "bronze",
            "card_no": "8800000000001",
            "erased_at": None,
            "consents": consents or {},
        }
        items = []
        if wechat:
            items.append({"kind": "wechat_openid", "value": wechat, "created_at": T0.isoformat()})
        if push:
            items.append({"kind": "push_token", "value": push, "created_at": T0.isoformat()})
        self.identities[member_id] = items
        return member_id

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.down:
            return httpx.Response(503, json={"code": "service_unavailable"})
        if request.headers.get("authorization") != "Bearer member-key":
            return httpx.Response(401, json={"code": "unauthorized"})
        parts = request.url.path.strip("/").split("/")  # v1 members {id} [identities]
        member = self.members.get(parts[2])
        if member is None:
            return httpx.Response(404, json={"code": "not_found"})
        if len(parts) == 4:
            return httpx.Response(200, json={"items": self.identities.get(parts[2], [])})
        return httpx.Response(200, json=member)


class ScriptedProvider:
    """A provider that fails `failures` times (transiently unless `permanent`), then sends."""

    def __init__(self, name: str, failures: int = 0, permanent: bool = False) -> None:
        self.name = name
        self.failures = failures
        self.permanent = permanent
        self.sent: list[OutgoingMessage] = []
        self.tries = 0

    async def send(self, message: OutgoingMessage) -> None:
        self.tries += 1
        if self.failures > 0:
            self.failures -= 1
            raise ProviderError(f"{self.name} is down", permanent=self.permanent)
        self.sent.append(message)

    def to(self, member_id: str) -> list[OutgoingMessage]:
        return [m for m in self.sent if m.member_id == member_id]


def scripted_providers() -> dict[str, list[Any]]:
    return {c: [ScriptedProvider(f"{c}-primary")] for c in ("email", "sms", "wechat", "push")}


def notifier_settings(**overrides: Any) -> NotifierSettings:
    values: dict[str, Any] = {
        "member_url": "http://member.test",
        "member_api_key": "member-key",
        "member_cache_seconds": 0,
        "retry_attempts": 2,
        "retry_base_seconds": 1,
    }
    values.update(overrides)
    return NotifierSettings(**values)


class Harness:
    """The notifier service under test with what it talks to."""

    def __init__(self, service: RunningService, notifier: Notifier, members: FakeMembers):
        self.service = service
        self.notifier = notifier
        self.members = members
        self.client = service.client
        self.runtime = service.runtime
        self.clock: FixedClock = service.runtime.clock  # type: ignore[assignment]

    def use(self, providers: dict[str, list[Any]]) -> dict[str, list[Any]]:
        self.notifier.providers = providers
        return providers

    async def deliver(self, *events: Event[Any], at: datetime | None = None) -> None:
        """What the consumer does with a batch: the same handlers, inbox and transaction; the
        clock reads `at` (default T0) while it runs."""
        self.clock.set(at or T0)
        runtime = self.runtime
        async with runtime.transaction() as conn:
            await apply_events(
                conn, runtime.consumer_group, runtime.definition.handlers(runtime), list(events)
            )

    async def run_job(self, job: str, as_of: datetime) -> dict[str, Any]:
        response = await self.client.post(
            f"/v1/admin/jobs/{job}/run", json={"as_of": as_of.isoformat()}
        )
        assert response.status_code == 200, response.text
        return response.json()["counts"]  # type: ignore[no-any-return]

    async def delivery_list(self, member_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            "/v1/deliveries", params={"member_id": member_id, "limit": 500}
        )
        assert response.status_code == 200, response.text
        return response.json()["items"]  # type: ignore[no-any-return]

    async def deliveries(self, member_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        """The member's deliveries by (message type, channel); the newest wins."""
        found = reversed(await self.delivery_list(member_id))
        return {(d["event_type"], d["channel"]): d for d in found}

    async def statuses(self, member_id: str, message_type: str) -> dict[str, tuple[str, Any]]:
        found = await self.deliveries(member_id)
        return {c: (d["status"], d["reason"]) for (t, c), d in found.items() if t == message_type}

    async def inbox(self, member_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/v1/members/{member_id}/inbox")
        assert response.status_code == 200, response.text
        return response.json()["items"]  # type: ignore[no-any-return]

    async def notifications(self, member_id: str, kind: str) -> list[dict[str, Any]]:
        return [
            e["data"]
            for e in await outbox_events(
                self.runtime, key=member_id, event_type=f"notification.{kind}"
            )
        ]

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.runtime.engine.connect() as conn:
            return list((await conn.execute(text(statement), params)).all())


def new_member(prefix: str = "n") -> str:
    return f"{prefix}{next(_ids):06d}"


def event(event_type: str, data: Any, member_id: str, at: datetime = T0) -> Event[Any]:
    return make_event(event_type, data, subject=member_id, source="test", time=at)
