"""Fixtures: the five services in this process (fresh databases, no broker), the console wired
to them through ASGI transports, and a browser-like client that fills in the forms' tokens."""

from __future__ import annotations

import itertools
import re
from html import unescape
from typing import Any

import httpx
import pytest_asyncio
from loyalty_console.app import create_app
from loyalty_shared.testing import TEST_KEY, DatabaseFactory

from .inprocess import InProcessPlatform

_phones = itertools.count(13900000001)


@pytest_asyncio.fixture(scope="session")
async def platform(databases: DatabaseFactory):
    running = InProcessPlatform()
    await running.start(databases)
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="session")
async def console_app(platform: InProcessPlatform):
    return create_app(transports=platform.transports())


class Browser:
    """An httpx client that reads each form's hidden fields, as a browser would send them."""

    def __init__(self, app: Any, *, client: tuple[str, int] = ("127.0.0.1", 123)) -> None:
        # `client`: the address the console sees this browser at (its sign-in throttle counts
        # failures per address).
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=client), base_url="http://console.test"
        )
        self.page = ""

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("follow_redirects", True)
        response = await self.client.get(url, **kwargs)
        self.page = response.text
        return response

    def form_fields(self, action: str, page: str | None = None) -> dict[str, str]:
        page = self.page if page is None else page
        match = re.search(rf'<form[^>]*action="{re.escape(action)}"[^>]*>(.*?)</form>', page, re.S)
        assert match, f"no form posting to {action} on the page"
        fields = {}
        for name, value in re.findall(
            r'<input type="hidden" name="([^"]+)" value="([^"]*)"', match.group(1)
        ):
            fields[name] = unescape(value)
        return fields

    async def submit(
        self, action: str, data: dict[str, Any], *, follow: bool = True, **kwargs: Any
    ) -> httpx.Response:
        fields = {**self.form_fields(action), **data}
        response = await self.client.post(action, data=fields, **kwargs)
        while follow and response.status_code in (302, 303):
            response = await self.client.get(response.headers["location"])
        self.page = response.text
        return response

    async def sign_in(self, key: str = TEST_KEY) -> httpx.Response:
        await self.get("/login")
        return await self.submit("/login", {"api_key": key})

    async def aclose(self) -> None:
        await self.client.aclose()


@pytest_asyncio.fixture
async def browser(console_app: Any):
    b = Browser(console_app)
    yield b
    await b.aclose()


@pytest_asyncio.fixture
async def signed_in(browser: Browser):
    response = await browser.sign_in()
    assert response.status_code == 200, response.text[:500]
    return browser


async def new_member(platform: InProcessPlatform, **fields: Any) -> dict[str, Any]:
    phone = str(next(_phones))
    response = await platform.services["member"].client.post(
        "/v1/members", json={"phone": phone, **fields}
    )
    assert response.status_code == 201, response.text
    await platform.pump()
    return dict(response.json())
