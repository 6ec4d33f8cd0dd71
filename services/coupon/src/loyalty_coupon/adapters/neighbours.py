"""HTTP clients of the coupon service's neighbours: the points service (exchanges), the
segmenter (members of a segment, for bulk issue) and the member service (whose birthday falls on
a day, for birthday campaigns). Tests swap the transports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import httpx
from loyalty_shared.auth import key_with_scope
from loyalty_shared.settings import SERVICE_PORT_OFFSETS

from ..config import CouponSettings

if TYPE_CHECKING:
    from loyalty_shared.service import Runtime


# The scope of every call this service makes to each neighbour: points debits and their cancel
# (`points:write`), a segment's members and a day's birthdays (`members:read`).
NEEDED_SCOPES = {"points": "points:write", "segmenter": "members:read", "member": "members:read"}


class NeighbourUnavailable(Exception):
    """The neighbour could not answer (down, timed out, 5xx): try again later."""


class NeighbourRefused(Exception):
    """The neighbour answered with a 4xx problem."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('code')}: {body.get('detail')}")
        self.status = status
        self.body = body

    @property
    def code(self) -> str | None:
        return self.body.get("code")


@dataclass
class Neighbours:
    """Where the neighbours are; `*_transport` replaces the network (tests, in-process apps)."""

    settings: CouponSettings = field(default_factory=CouponSettings)
    points_transport: httpx.AsyncBaseTransport | None = None
    segmenter_transport: httpx.AsyncBaseTransport | None = None
    member_transport: httpx.AsyncBaseTransport | None = None

    def _client(
        self, runtime: Runtime, service: str, url: str, key: str, transport: Any
    ) -> httpx.AsyncClient:
        base = (
            url or f"http://127.0.0.1:{runtime.settings.port_base + SERVICE_PORT_OFFSETS[service]}"
        )
        # the key the calls to this neighbour need, not whichever key comes first
        key = key or key_with_scope(runtime.settings.api_keys, NEEDED_SCOPES[service])
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(
            base_url=base,
            headers=headers,
            transport=transport,
            timeout=self.settings.http_timeout_seconds,
        )

    def points(self, runtime: Runtime) -> PointsClient:
        s = self.settings
        return PointsClient(
            self._client(runtime, "points", s.points_url, s.points_api_key, self.points_transport)
        )

    def segmenter(self, runtime: Runtime) -> SegmenterClient:
        s = self.settings
        return SegmenterClient(
            self._client(
                runtime, "segmenter", s.segmenter_url, s.segmenter_api_key, self.segmenter_transport
            )
        )

    def member(self, runtime: Runtime) -> MemberClient:
        s = self.settings
        return MemberClient(
            self._client(runtime, "member", s.member_url, s.member_api_key, self.member_transport)
        )


def neighbours_of(runtime: Runtime) -> Neighbours:
    found = getattr(runtime.definition, "neighbours", None)
    return found if isinstance(found, Neighbours) else Neighbours()


async def _call(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:  # refused, reset, timed out
        raise NeighbourUnavailable(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise NeighbourUnavailable(f"{response.status_code}: {response.text[:200]}")
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:200]}
    if response.status_code == 409 and body.get("code") in (
        "idempotency_key_in_progress",
        "idempotency_in_progress",
    ):
        raise NeighbourUnavailable("the first request with this key is still running")
    if response.status_code >= 400:
        raise NeighbourRefused(response.status_code, body if isinstance(body, dict) else {})
    return body if isinstance(body, dict) else {"items": body}


class PointsClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __aenter__(self) -> PointsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def redeem(
        self, *, member_id: str, points: int, reason: str, idempotency_key: str
    ) -> dict[str, Any]:
        return await _call(
            self.client,
            "POST",
            "/v1/redemptions",
            json={"member_id": member_id, "points": points, "reason": reason},
            headers={"Idempotency-Key": idempotency_key},
        )

    async def cancel(self, redemption_id: str, *, idempotency_key: str) -> None:
        try:
            await _call(
                self.client,
                "POST",
                f"/v1/redemptions/{redemption_id}/cancel",
                headers={"Idempotency-Key": idempotency_key},
            )
        except NeighbourRefused as exc:
            if exc.status == 409:  # cancelled already: what we wanted
                return
            raise


class SegmenterClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __aenter__(self) -> SegmenterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def members_page(
        self, segment_code: str, *, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """One page of a segment's members; items may be member ids or `{member_id, ...}`."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        body = await _call(
            self.client, "GET", f"/v1/segments/{segment_code}/members", params=params
        )
        members = []
        for item in body.get("items", []):
            member_id = item.get("member_id") if isinstance(item, dict) else item
            if isinstance(member_id, str) and member_id:
                members.append(member_id)
        return members, body.get("next_cursor")


class MemberClient:
    PAGE_LIMIT = 500  # the most the member service answers in one page

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __aenter__(self) -> MemberClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def birthdays_page(
        self, on: date, *, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """One page of the members whose birthday is celebrated on `on` (29 February birthdays
        on 28 February in other years: the member service decides, given the year)."""
        params: dict[str, Any] = {
            "on": f"{on:%m-%d}",
            "year": on.year,
            "limit": max(1, min(limit, self.PAGE_LIMIT)),
        }
        if cursor:
            params["cursor"] = cursor
        body = await _call(self.client, "GET", "/v1/members:birthdays", params=params)
        members = [
            item["member_id"]
            for item in body.get("items", [])
            if isinstance(item, dict) and isinstance(item.get("member_id"), str)
        ]
        return members, body.get("next_cursor")
