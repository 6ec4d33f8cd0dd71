"""The console's sign-in holes, closed: where `next` may send a browser, who gets a session
(only a signed-in operator), `Secure` cookies behind a TLS proxy (uvicorn's proxy
headers as the console runs it), and the throttle of failed sign-ins per client address."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from loyalty_console.app import create_app
from loyalty_console.config import ConsoleSettings
from loyalty_console.web import safe_next
from loyalty_shared.kafka.broker import free_port
from loyalty_shared.settings import PlatformSettings
from loyalty_shared.testing import READ_ONLY_KEY, TEST_KEY

from .conftest import Browser
from .inprocess import InProcessPlatform

CSRF_FIELD = re.compile(r'<input type="hidden" name="csrf" value="([^"]+)"')


class CountingTransport(httpx.AsyncBaseTransport):
    """A service's transport that counts the requests the console sends it."""

    def __init__(self, inner: httpx.AsyncBaseTransport, counter: list[int]) -> None:
        self.inner = inner
        self.counter = counter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.counter[0] += 1
        return await self.inner.handle_async_request(request)


def service_transports(
    platform: InProcessPlatform, address: str, counter: list[int] | None = None
) -> dict[str, httpx.AsyncBaseTransport]:
    """The five services as a console at `address` reaches them: each test's own address, so
    that the services' own throttle of unknown keys (per address) counts each test apart."""
    counter = counter if counter is not None else [0]
    return {
        name: CountingTransport(httpx.ASGITransport(app=s.app, client=(address, 123)), counter)
        for name, s in platform.services.items()
    }


# ---------------------------------------------------------------------------------------------
# 1. `next` at sign-in: only a plain path of this console
# ---------------------------------------------------------------------------------------------

HOSTILE_NEXT = [
    "/\t/evil.example",  # uvicorn lets the tab through, browsers strip it: //evil.example
    "/\n/evil.example",
    "/\r/evil.example",
    "\t//evil.example",
    "/\x00/evil.example",
    "/\x1f/evil.example",
    "/\x7f/evil.example",
    "/\x85/evil.example",  # NEL, a C1 control
    "/\u00a0/evil.example",  # no-break space
    "/\u2028/evil.example",  # line separator
    "/\u3000/evil.example",  # ideographic space
    "/\u200b/evil.example",  # zero-width space (a format character)
    "/\ufeff/evil.example",  # byte order mark
    "/\u202e/evil.example",  # right-to-left override
    " /evil.example",
    "//evil.example",
    "///evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "/\\/evil.example",
    "/members\\..\\..\\evil",
    "https://evil.example/",
    "http:evil.example",
    "javascript:alert(1)",
    "evil.example",
    "",
    "/%2F%2Fevil.example",
    "/%2f/evil.example",
    "/%5Cevil.example",
    "/%5c%5cevil.example",
    "/%09/evil.example",
    "%09/evil.example",
    "/%252F%252Fevil.example",  # encoded twice
    "/%25252F%25252Fevil.example",  # three times
    "/members%0d%0aSet-Cookie:%20x=y",
    "/%E2%80%AE/evil.example",  # an encoded right-to-left override
    "/" + "a" * 5000,
]
SAFE_NEXT = [
    "/members",
    "/members/01JABCDEF?ledger_cursor=abc",
    "/members?q=Mei%20Lin",  # an encoded space in a query is an ordinary search
    "/segments/%E5%A4%A7%E5%AE%A2%E6%88%B7",  # a Chinese segment code, encoded
    "/campaigns/SPRING-10",
]


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_safe_next_refuses_anything_but_a_plain_path(target: str):
    assert safe_next(target) == "/members"
    assert safe_next(target, "") == ""


@pytest.mark.parametrize("target", SAFE_NEXT)
def test_safe_next_keeps_a_plain_path(target: str):
    assert safe_next(target) == target


def test_safe_next_encodes_letters_beyond_ascii_for_the_location_header():
    assert safe_next("/segments/大客户") == "/segments/%E5%A4%A7%E5%AE%A2%E6%88%B7"
    assert safe_next("/members?q=Zoë") == "/members?q=Zo%C3%AB"


async def test_a_hostile_next_never_leaves_the_console(browser: Browser):
    # The URL of the report: `%09` decodes to a tab in `next`.
    browser.client.cookies.clear()
    await browser.get("/login?next=/%09/evil.example")
    assert browser.form_fields("/login")["next"] == ""
    signed = await browser.submit("/login", {"api_key": TEST_KEY}, follow=False)
    assert signed.headers["location"] == "/members"

    for target in HOSTILE_NEXT:
        browser.client.cookies.clear()
        # What the sign-in page carries forward from ?next=
        page = await browser.get("/login", params={"next": target})
        assert page.status_code == 200
        assert browser.form_fields("/login")["next"] == "", repr(target)
        # A forged form that posts it anyway
        signed = await browser.submit("/login", {"api_key": TEST_KEY, "next": target}, follow=False)
        assert signed.status_code == 303, (repr(target), signed.status_code)
        assert signed.headers["location"] == "/members", repr(target)
        # Signed in already: /login?next= redirects at once
        again = await browser.client.get("/login", params={"next": target})
        assert again.status_code == 303 and again.headers["location"] == "/", repr(target)
        # The language switch carries `next` too
        await browser.get("/account")
        switched = await browser.submit("/locale", {"locale": "en", "next": target}, follow=False)
        assert switched.headers["location"] == "/", repr(target)

    for target in SAFE_NEXT:
        browser.client.cookies.clear()
        await browser.get("/login", params={"next": target})
        assert browser.form_fields("/login")["next"] == target
        signed = await browser.submit("/login", {"api_key": TEST_KEY}, follow=False)
        assert signed.headers["location"] == target

    browser.client.cookies.clear()
    await browser.get("/login")
    signed = await browser.submit(
        "/login", {"api_key": TEST_KEY, "next": "/segments/大客户"}, follow=False
    )
    assert signed.headers["location"] == "/segments/%E5%A4%A7%E5%AE%A2%E6%88%B7"


async def test_the_sign_in_redirect_round_trips_the_page_asked_for(browser: Browser):
    response = await browser.client.get("/members", params={"q": "Mei Lin"})
    assert response.status_code == 303
    await browser.get(response.headers["location"])
    signed = await browser.submit("/login", {"api_key": TEST_KEY}, follow=False)
    assert signed.headers["location"] == "/members?q=Mei+Lin"


# ---------------------------------------------------------------------------------------------
# 2. A session only at sign-in: anonymous traffic gets no session and signs no one out
# ---------------------------------------------------------------------------------------------


async def test_anonymous_requests_create_no_session_and_sign_no_one_out(
    platform: InProcessPlatform,
):
    app = create_app(ConsoleSettings(), transports=service_transports(platform, "10.9.2.1"))
    operator = Browser(app, client=("192.0.2.10", 4000))
    anonymous = Browser(app, client=("198.51.100.7", 5000))
    try:
        assert (await operator.sign_in()).status_code == 200
        answers: dict[int, int] = {}
        session_cookies: list[str] = []

        def remember(response: httpx.Response) -> None:
            answers[response.status_code] = answers.get(response.status_code, 0) + 1
            cookies = response.headers.get_list("set-cookie")
            session_cookies.extend(c for c in cookies if c.startswith("console_session="))

        for i in range(50):  # 250 anonymous requests
            for url in ("/", "/login", f"/nowhere-{i}", "/members"):
                anonymous.client.cookies.clear()
                remember(await anonymous.client.get(url))
            anonymous.client.cookies.clear()
            page = await anonymous.client.get("/login")
            token = CSRF_FIELD.search(page.text)
            assert token, page.text[:300]
            bad_key = await anonymous.client.post(
                "/login", data={"csrf": token.group(1), "api_key": f"guess-{i}"}
            )
            assert bad_key.status_code in (401, 429), bad_key.status_code
            remember(bad_key)
            anonymous.client.cookies.clear()
            forged = await anonymous.client.post(
                "/login", data={"csrf": "forged", "api_key": f"guess-{i}"}
            )
            assert forged.status_code == 403
            remember(forged)
        assert set(answers) <= {200, 303, 401, 403, 404, 429}, answers
        assert session_cookies == [], "an anonymous visitor got a session"

        still = await operator.get("/members")
        assert still.status_code == 200 and still.url.path == "/members", still.url
    finally:
        await operator.aclose()
        await anonymous.aclose()


async def test_the_sign_in_form_token_is_bound_to_its_browser(browser: Browser, console_app):
    await browser.get("/login")
    token = browser.form_fields("/login")["csrf"]
    for forged in ("", "forged", "é", token + "x"):
        refused = await browser.client.post("/login", data={"csrf": forged, "api_key": TEST_KEY})
        assert refused.status_code == 403, forged
    stranger = Browser(console_app)
    try:
        # Another browser (no cookie of its own, or its own cookie) cannot use this token.
        refused = await stranger.client.post("/login", data={"csrf": token, "api_key": TEST_KEY})
        assert refused.status_code == 403
        await stranger.get("/login")
        refused = await stranger.client.post("/login", data={"csrf": token, "api_key": TEST_KEY})
        assert refused.status_code == 403
    finally:
        await stranger.aclose()
    # The browser it was given to signs in with it, and the sign-in token is not a session's.
    signed = await browser.submit("/login", {"api_key": TEST_KEY}, follow=False)
    assert signed.status_code == 303
    cookies = "\n".join(signed.headers.get_list("set-cookie"))
    assert "console_session=" in cookies
    page = await browser.get("/members")
    assert token not in page.text


async def test_an_anonymous_visitor_can_still_switch_the_language(browser: Browser):
    await browser.get("/login")
    switched = await browser.submit("/locale", {"locale": "en", "next": "/login"})
    assert switched.status_code == 200 and '<html lang="en">' in switched.text


# ---------------------------------------------------------------------------------------------
# 3. Secure cookies behind a TLS proxy: FORWARDED_ALLOW_IPS, as the console runs uvicorn
# ---------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def console_on_a_port(
    platform: InProcessPlatform, settings: ConsoleSettings
) -> AsyncIterator[tuple[str, Any]]:
    """The console served by uvicorn with the config `python -m loyalty_console` builds."""
    from loyalty_console.__main__ import uvicorn_config

    app = create_app(settings, transports=service_transports(platform, "10.9.3.1"))
    port = free_port()
    config = uvicorn_config(app, settings, PlatformSettings(host="127.0.0.1"), port=port)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        await task


async def _sign_in_through(url: str, proxy: str, key: str = TEST_KEY) -> list[str]:
    """A sign-in through a TLS-terminating proxy at address `proxy`: every Set-Cookie seen."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.50"}
    transport = httpx.AsyncHTTPTransport(local_address=proxy)
    async with httpx.AsyncClient(transport=transport, base_url=url) as client:
        page = await client.get("/login", headers=forwarded)
        assert page.status_code == 200
        set_cookies = page.headers.get_list("set-cookie")
        jar = "; ".join(c.split(";", 1)[0] for c in set_cookies)
        token = CSRF_FIELD.search(page.text)
        assert token
        signed = await client.post(
            "/login",
            data={"csrf": token.group(1), "api_key": key},
            headers={**forwarded, "Cookie": jar},
        )
        assert signed.status_code in (303, 401), signed.text[:300]
        return set_cookies + signed.headers.get_list("set-cookie")


def _secure(set_cookies: list[str], name: str) -> bool:
    """Whether every Set-Cookie of `name` (there is at least one) carries `Secure`."""
    found = [c for c in set_cookies if c.startswith(f"{name}=")]
    assert found, (name, set_cookies)
    return all("secure" in [p.strip().lower() for p in c.split(";")] for c in found)


async def test_cookies_are_secure_behind_a_trusted_tls_proxy_only(platform: InProcessPlatform):
    # The proxy on another host (127.0.0.2) is trusted: its X-Forwarded-Proto counts.
    trusted = ConsoleSettings(forwarded_allow_ips="127.0.0.2")
    async with console_on_a_port(platform, trusted) as (url, app):
        cookies = await _sign_in_through(url, "127.0.0.2")
        assert _secure(cookies, "console_session")
        assert all(_secure(cookies, c.split("=", 1)[0]) for c in cookies)
        # Its X-Forwarded-For is the client's address, which the sign-in throttle counts.
        await _sign_in_through(url, "127.0.0.2", key="nobody-knows-me")
        assert app.state.signin_throttle.failures("203.0.113.50") == 1
        assert app.state.signin_throttle.failures("127.0.0.2") == 0
        # Anyone else who sends the header is not believed.
        cookies = await _sign_in_through(url, "127.0.0.3")
        assert not _secure(cookies, "console_session")

    # The default trusts 127.0.0.1 only: a proxy on another host is not believed.
    async with console_on_a_port(platform, ConsoleSettings()) as (url, _):
        assert not _secure(await _sign_in_through(url, "127.0.0.2"), "console_session")
        assert _secure(await _sign_in_through(url, "127.0.0.1"), "console_session")

    # CONSOLE_COOKIE_SECURE=true: Secure whatever the request says.
    always = ConsoleSettings(cookie_secure="true")
    async with console_on_a_port(platform, always) as (url, _):
        cookies = await _sign_in_through(url, "127.0.0.3")
        assert all(_secure(cookies, c.split("=", 1)[0]) for c in cookies)


def test_forwarded_allow_ips_reaches_uvicorn_from_the_environment(monkeypatch):
    import loyalty_console.__main__ as entry

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8,192.0.2.7")
    monkeypatch.setenv("CONSOLE_COOKIE_SECURE", "true")
    settings = ConsoleSettings()
    assert settings.forwarded_allow_ips == "10.0.0.0/8,192.0.2.7"
    assert settings.cookie_secure == "true"
    started: list[uvicorn.Config] = []

    def run(server: uvicorn.Server, sockets: Any = None) -> None:
        started.append(server.config)
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    assert entry.main([]) == 0
    [config] = started
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == "10.0.0.0/8,192.0.2.7"
    monkeypatch.delenv("FORWARDED_ALLOW_IPS")
    assert ConsoleSettings().forwarded_allow_ips == "127.0.0.1"
    with pytest.raises(ValueError):
        ConsoleSettings(cookie_secure="sometimes")


# ---------------------------------------------------------------------------------------------
# 4. Failed sign-ins throttled per client address, before any probe reaches the services
# ---------------------------------------------------------------------------------------------


async def test_failed_sign_ins_are_throttled_per_address_without_probing(
    platform: InProcessPlatform,
):
    probes = [0]
    app = create_app(
        ConsoleSettings(signin_failures_per_minute=5),
        transports=service_transports(platform, "10.9.4.1", probes),
    )
    guesser = Browser(app, client=("203.0.113.10", 1000))
    neighbour = Browser(app, client=("203.0.113.11", 1000))
    try:
        assert (await guesser.sign_in()).status_code == 200  # a valid key, from this address
        guesser.client.cookies.clear()
        await guesser.get("/login")
        for i in range(5):
            refused = await guesser.submit("/login", {"api_key": f"guess-{i}"})
            assert refused.status_code == 401, (i, refused.status_code)
        sent = probes[0]
        throttled = await guesser.submit("/login", {"api_key": "guess-5"})
        assert throttled.status_code == 429
        wait = int(throttled.headers["retry-after"])
        assert 1 <= wait <= 60
        assert 'role="alert"' in throttled.text and f"{wait}" in throttled.text
        assert probes[0] == sent, "a throttled sign-in must not probe the services"
        again = await guesser.submit("/login", {"api_key": "guess-6"})
        assert again.status_code == 429 and probes[0] == sent

        # A key that has signed in here before is not refused by the throttle.
        valid = await guesser.submit("/login", {"api_key": TEST_KEY})
        assert valid.status_code == 200 and valid.url.path == "/members"
        # (A key this console has never seen succeed cannot be told from a guess without
        # asking the services, which is what the throttle withholds: it waits like a guess.)
        guesser.client.cookies.clear()
        await guesser.get("/login")
        sent = probes[0]
        unseen = await guesser.submit("/login", {"api_key": READ_ONLY_KEY})
        assert unseen.status_code == 429 and probes[0] == sent

        # Another address is not affected.
        await neighbour.get("/login")
        assert (await neighbour.submit("/login", {"api_key": "guess"})).status_code == 401
        assert (await neighbour.submit("/login", {"api_key": TEST_KEY})).status_code == 200

        # A minute later the address may try again.
        throttle = app.state.signin_throttle
        now = throttle.clock()
        throttle.clock = lambda: now + 61
        guesser.client.cookies.clear()
        await guesser.get("/login")
        assert (await guesser.submit("/login", {"api_key": "guess-7"})).status_code == 401
    finally:
        await guesser.aclose()
        await neighbour.aclose()


async def test_a_services_throttle_answer_is_shown_as_a_wait(platform: InProcessPlatform):
    """The services throttle unknown keys too (contract §3): their 429 is a failed sign-in."""

    def throttled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429,
            json={
                "type": "about:blank",
                "title": "Too Many Requests",
                "status": 429,
                "code": "rate_limited",
                "detail": "retry in 7 s",
            },
            headers={"Retry-After": "7", "Content-Type": "application/problem+json"},
        )

    transports = {n: httpx.MockTransport(throttled) for n in platform.services}
    app = create_app(ConsoleSettings(), transports=transports)
    browser = Browser(app, client=("203.0.113.20", 1000))
    try:
        await browser.get("/login")
        response = await browser.submit("/login", {"api_key": "guess"})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert 'role="alert"' in response.text
        assert app.state.signin_throttle.failures("203.0.113.20") == 1
    finally:
        await browser.aclose()


def test_ipv6_clients_are_throttled_by_their_network():
    from loyalty_console.throttle import client_key

    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("203.0.113.5") == "203.0.113.5"
    assert client_key("::ffff:203.0.113.5") == "203.0.113.5"
    assert client_key(None) == "unknown"
