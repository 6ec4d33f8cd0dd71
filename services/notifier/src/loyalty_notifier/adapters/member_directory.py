"""Contact data from the member service over HTTP, cached briefly in this process.

Addresses never travel in events; the notifier asks `GET /v1/members/{id}` (phone, email,
name, locale, timezone) and `GET /v1/members/{id}/identities` (WeChat openid, push token) just
before sending, and forgets them after `ttl` seconds or when the member is erased."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


class DirectoryUnavailable(Exception):
    """The member service could not answer now; the delivery waits and tries again."""


@dataclass(frozen=True)
class Contact:
    member_id: str
    found: bool = True
    erased: bool = False
    name: str | None = None
    tier: str | None = None
    card_no: str | None = None
    locale: str | None = None
    timezone: str | None = None
    addresses: dict[str, str] = field(default_factory=dict)  # channel → address
    consents: dict[str, bool] = field(default_factory=dict)  # marketing consent per channel

    def address(self, channel: str) -> str | None:
        return self.addresses.get(channel)

    def for_templates(self) -> dict[str, Any]:
        return {"name": self.name, "tier": self.tier, "card_no": self.card_no}


_IDENTITY_CHANNEL = {"wechat_openid": "wechat", "push_token": "push"}


def contact_from(member: dict[str, Any], identities: list[dict[str, Any]]) -> Contact:
    addresses: dict[str, str] = {}
    if member.get("email"):
        addresses["email"] = member["email"]
    if member.get("phone"):
        addresses["sms"] = member["phone"]
    for identity in identities:  # the newest of each kind wins
        channel = _IDENTITY_CHANNEL.get(identity.get("kind", ""))
        if channel and identity.get("value"):
            addresses[channel] = identity["value"]
    return Contact(
        member_id=member["member_id"],
        erased=bool(member.get("erased_at")),
        name=member.get("name"),
        tier=member.get("tier"),
        card_no=member.get("card_no"),
        locale=member.get("locale"),
        timezone=member.get("timezone"),
        addresses={} if member.get("erased_at") else addresses,
        consents={k: bool(v) for k, v in (member.get("consents") or {}).items()},
    )


class MemberDirectory:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        ttl: float = 60.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_entries: int = 10_000,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.ttl = ttl
        self.timeout = timeout
        self.transport = transport
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, Contact]] = {}

    def forget(self, member_id: str) -> None:
        self._cache.pop(member_id, None)

    def clear(self) -> None:
        self._cache.clear()

    async def contacts(self, member_ids: list[str]) -> dict[str, Contact | Exception]:
        """Each member's contact, or the error that kept it from us, fetched concurrently."""
        now = time.monotonic()
        result: dict[str, Contact | Exception] = {}
        missing = []
        for member_id in dict.fromkeys(member_ids):
            cached = self._cache.get(member_id)
            if cached and cached[0] > now:
                result[member_id] = cached[1]
            else:
                missing.append(member_id)
        if not missing:
            return result
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=self.timeout,
            transport=self.transport,
        ) as client:
            semaphore = asyncio.Semaphore(20)

            async def one(member_id: str) -> Contact | Exception:
                async with semaphore:
                    try:
                        return await self._fetch(client, member_id)
                    except DirectoryUnavailable as exc:
                        return exc

            fetched = await asyncio.gather(*(one(m) for m in missing))
        if len(self._cache) > self.max_entries:
            self._cache.clear()
        expires = time.monotonic() + self.ttl
        for member_id, contact in zip(missing, fetched, strict=True):
            result[member_id] = contact
            if isinstance(contact, Contact):
                self._cache[member_id] = (expires, contact)
        return result

    async def _fetch(self, client: httpx.AsyncClient, member_id: str) -> Contact:
        try:
            response = await client.get(f"/v1/members/{member_id}")
            if response.status_code == 404:
                return Contact(member_id=member_id, found=False)
            _check(response)
            member = response.json()
            identities: list[dict[str, Any]] = []
            if not member.get("erased_at"):
                found = await client.get(f"/v1/members/{member_id}/identities")
                if found.status_code != 404:
                    _check(found)
                    identities = found.json().get("items", [])
        except httpx.HTTPError as exc:
            raise DirectoryUnavailable(f"member service unreachable: {type(exc).__name__}") from exc
        except ValueError as exc:
            raise DirectoryUnavailable(
                "member service answered something that is not JSON"
            ) from exc
        return contact_from(member, identities)


def _check(response: httpx.Response) -> None:
    if not response.is_success:
        raise DirectoryUnavailable(f"member service answered {response.status_code}")
