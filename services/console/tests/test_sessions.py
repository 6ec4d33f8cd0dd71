"""Sessions sealed in the cookie (sessions.py): any console process with the same
CONSOLE_SESSION_SECRET accepts a sign-in made by another (several replicas, a restart), none
with another secret; the idle and absolute lifetimes are enforced from inside the cookie; the
API key cannot be read from it, nor a byte of it changed; rotation; no cookie over 4 KB."""

from __future__ import annotations

import base64
import itertools
import re
import time
from typing import Any

import httpx
import pytest
from loyalty_console.app import create_app
from loyalty_console.config import ConsoleSettings
from loyalty_console.sessions import (
    COOKIE,
    MAX_COOKIE_BYTES,
    REFRESH_SECONDS,
    Session,
    Sessions,
    parse_secrets,
)
from loyalty_shared.testing import TEST_KEY

from .conftest import Browser, new_member
from .inprocess import InProcessPlatform

SECRET = "s" * 32 + "-first-secret"
OTHER = "o" * 32 + "-other-secret"
IDLE, MAX_AGE = 30 * 60.0, 12 * 3600.0
KEY = "k-" + "0123456789abcdef" * 3  # long and distinctive, unlike TEST_KEY
SCOPES = frozenset({"members:read", "points:write", "admin"})


def sessions(*secrets: str, clock: Any = time.time) -> Sessions:
    return Sessions(list(secrets), idle_seconds=IDLE, max_age_seconds=MAX_AGE, clock=clock)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _encodings(secret: str) -> set[str]:
    """The key in clear and as base64 (standard and URL-safe) at each of the three byte offsets
    it could start at inside a longer base64 text, without the characters it shares with its
    neighbours."""
    found = {secret}
    raw = secret.encode()
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + raw).decode()
            start = -(-offset * 8 // 6)  # the first character made of the key's bits alone
            found.add(text[start:-4])
    return {e for e in found if len(e) >= 4}


# ---------------------------------------------------------------------------------------------
# The cookie itself
# ---------------------------------------------------------------------------------------------


def test_a_session_sealed_by_one_process_opens_in_another_with_the_same_secret():
    one, another = sessions(SECRET), sessions(SECRET)
    session = one.sign_in(KEY, SCOPES)
    session.say("ok", "Saved.")
    opened = another.load(one.cookie_value(session))
    assert opened is not None
    assert (opened.sid, opened.csrf, opened.api_key) == (session.sid, session.csrf, KEY)
    assert opened.scopes == SCOPES and opened.flash == [("ok", "Saved.")]
    assert opened.changed is False  # nothing to send back yet
    assert sessions(OTHER).load(one.cookie_value(session)) is None


def test_the_cookie_does_not_carry_the_api_key_readably():
    box = sessions(SECRET)
    session = box.sign_in(KEY, SCOPES)
    for _ in range(20):  # a fresh nonce each time: no two cookies alike
        value = box.cookie_value(session)
        for encoded in _encodings(KEY):
            assert encoded not in value
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        assert KEY.encode() not in raw and b"members:read" not in raw
        assert session.csrf not in value
    values = {box.cookie_value(session) for _ in range(5)}
    assert len(values) == 5
    # Nor does the session's repr, in case one reaches a log line.
    assert KEY not in repr(session)


def test_any_change_to_the_cookie_is_refused():
    box = sessions(SECRET)
    value = box.cookie_value(box.sign_in(KEY, SCOPES))
    assert box.load(value) is not None
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for position in range(len(value) - 1):  # the last character may carry padding bits only
        swapped = alphabet[(alphabet.index(value[position]) + 1) % len(alphabet)]
        assert box.load(value[:position] + swapped + value[position + 1 :]) is None, position
    for broken in (
        value[:-1],
        value[:20],
        value + "A",
        value + "AAAA",
        "",
        "not base64 at all!",
        "AQ",
        "A" * 100,
        value.replace(value[0], "B" if value[0] != "B" else "C", 1),
    ):
        assert box.load(broken) is None, broken
    # Another version byte, the same sealed body.
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[0] = 2
    assert box.load(base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")) is None


def test_idle_and_absolute_lifetimes_are_sealed_in_the_cookie():
    clock = Clock()
    box = sessions(SECRET, clock=clock)
    value = box.cookie_value(box.sign_in(KEY, SCOPES))

    clock.now += REFRESH_SECONDS - 1
    quiet = box.load(value)
    assert quiet is not None and quiet.changed is False  # no new cookie for every request

    clock.now += 2  # past REFRESH_SECONDS: the idle clock is stamped again
    stamped = box.load(value)
    assert stamped is not None and stamped.changed and stamped.seen == clock.now
    value = box.cookie_value(stamped)

    clock.now += IDLE + 1  # idle too long
    assert box.load(value) is None

    # In use every 20 minutes, it still ends 12 hours after the sign-in.
    clock.now = 1_900_000_000.0
    session = box.sign_in(KEY, SCOPES)
    value = box.cookie_value(session)
    started = clock.now
    while clock.now - started < MAX_AGE - 20 * 60:
        clock.now += 20 * 60
        session = box.load(value)
        assert session is not None, clock.now - started
        value = box.cookie_value(session)
    clock.now = started + MAX_AGE + 1
    assert box.load(value) is None


def test_the_first_secret_seals_and_every_one_opens():
    old_box = sessions(OTHER)
    old_cookie = old_box.cookie_value(old_box.sign_in(KEY, SCOPES))
    rotating = sessions(SECRET, OTHER)
    opened = rotating.load(old_cookie)
    assert opened is not None and opened.api_key == KEY
    assert opened.changed, "a cookie of an older secret is sealed again with the first"
    resealed = rotating.cookie_value(opened)
    assert sessions(SECRET).load(resealed) is not None
    assert sessions(OTHER).load(resealed) is None
    # Dropping the old secret ends the sessions it sealed.
    assert sessions(SECRET).load(old_cookie) is None


def test_no_cookie_over_4_kb_is_made():
    box = sessions(SECRET)
    longest = "K" * 1000
    assert box.api_key_fits(longest) and not box.api_key_fits("K" * 1100)
    assert not box.api_key_fits("\u0001" * 200)  # escaped in JSON: six bytes each
    session = box.sign_in(longest, frozenset(f"scope-{i}:write" for i in range(7)))
    for i in range(60):
        session.say("ok", f"第 {i} 条 优惠券已发放给分群中的全部会员 " * 5)
    value = box.cookie_value(session)
    assert len(COOKIE) + 1 + len(value) <= MAX_COOKIE_BYTES < 4096
    opened = box.load(value)
    assert opened is not None and opened.api_key == longest
    assert opened.flash and opened.flash[-1] == session.flash[-1], "the newest message stays"
    assert len(opened.flash) < len(session.flash)


def test_the_sign_in_form_token_verifies_on_any_process_with_the_secret():
    one, another = sessions(SECRET), sessions(SECRET)
    nonce = one.new_signin_nonce()
    token = one.signin_token(nonce)
    assert another.check_signin_token(token, nonce)
    assert not another.check_signin_token(token, one.new_signin_nonce())
    assert not sessions(OTHER).check_signin_token(token, nonce)
    assert sessions(SECRET, OTHER).check_signin_token(sessions(OTHER).signin_token(nonce), nonce)


def test_the_secret_setting():
    assert parse_secrets("") == []
    assert parse_secrets(f" {SECRET} , {OTHER},") == [SECRET, OTHER]
    with pytest.raises(ValueError, match="at least 32"):
        parse_secrets("too-short")
    with pytest.raises(ValueError, match="at least 32"):
        ConsoleSettings(session_secret=f"{SECRET},short")
    settings = ConsoleSettings(session_secret=f"{SECRET},{OTHER}")
    assert settings.session_secrets() == [SECRET, OTHER]
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert ConsoleSettings().session_idle_minutes == 30
    assert ConsoleSettings().session_max_hours == 12


def test_a_console_without_a_secret_makes_one_up_and_says_so(monkeypatch):
    import loyalty_console.app as app_module

    said: list[str] = []

    class Log:
        def warning(self, event: str, **_: Any) -> None:
            said.append(event)

    monkeypatch.setattr(app_module, "log", Log())
    box = create_app(ConsoleSettings()).state.sessions
    other = create_app(ConsoleSettings()).state.sessions
    assert other.load(box.cookie_value(box.sign_in(KEY, SCOPES))) is None
    assert said == ["console_session_secret_generated"] * 2
    create_app(ConsoleSettings(session_secret=SECRET))
    assert len(said) == 2  # nothing to say with a secret


def test_a_settings_error_stops_the_console_without_printing_the_secret(monkeypatch, capsys):
    import loyalty_console.__main__ as entry

    monkeypatch.setenv("CONSOLE_SESSION_SECRET", f"{SECRET},short-one")
    assert entry.main([]) == 2
    err = capsys.readouterr().err
    assert "console_settings_invalid" in err and "CONSOLE_SESSION_SECRET" in err
    assert SECRET not in err and "short-one" not in err


# ---------------------------------------------------------------------------------------------
# Two console processes (replicas, or one before and after a restart) over the real services
# ---------------------------------------------------------------------------------------------


class RoundRobin(httpx.AsyncBaseTransport):
    """A load balancer without sticky sessions: each request goes to the next console."""

    def __init__(self, apps: list[Any]) -> None:
        self.replicas = itertools.cycle(
            [httpx.ASGITransport(app=app, client=("192.0.2.40", 1000)) for app in apps]
        )
        self.served: list[int] = []
        self._ids = {id(app): i for i, app in enumerate(apps)}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = next(self.replicas)
        self.served.append(self._ids[id(transport.app)])
        return await transport.handle_async_request(request)


def _console(platform: InProcessPlatform, secret: str) -> Any:
    return create_app(ConsoleSettings(session_secret=secret), transports=platform.transports())


def _behind(apps: list[Any]) -> tuple[Browser, RoundRobin]:
    browser = Browser(apps[0])
    balancer = RoundRobin(apps)
    browser.client = httpx.AsyncClient(transport=balancer, base_url="http://console.test")
    return browser, balancer


async def test_two_replicas_with_the_same_secret_serve_one_operator(platform: InProcessPlatform):
    apps = [_console(platform, SECRET), _console(platform, SECRET)]
    browser, balancer = _behind(apps)
    try:
        # The sign-in page from one replica, the sign-in on the other (its CSRF token too).
        assert (await browser.sign_in()).status_code == 200
        assert browser.page.count("Sign out") + browser.page.count("退出") >= 1
        member = await new_member(platform)
        url = f"/members/{member['member_id']}"
        for _ in range(3):
            page = await browser.get(url)
            assert page.status_code == 200 and page.url.path == url
        # An action on one replica, its message shown by the other, and only once.
        response = await browser.submit(f"{url}/adjust", {"points": "40", "reason": "replicas"})
        assert response.status_code == 200
        assert re.search(r'data-testid="available">140<', response.text)
        assert 'class="flash ok"' in response.text
        again = await browser.get(url)
        assert 'class="flash ok"' not in again.text
        assert set(balancer.served) == {0, 1}
        # Sign-out on either replica ends it on both (the browser's cookie is gone).
        out = await browser.submit("/logout", {}, follow=False)
        assert out.status_code == 303 and 'console_session=""' in out.headers["set-cookie"]
        for _ in range(2):
            assert (await browser.client.get("/members")).status_code == 303
    finally:
        await browser.aclose()


async def test_a_restart_with_the_same_secret_keeps_the_operator_signed_in(
    platform: InProcessPlatform,
):
    before = Browser(_console(platform, SECRET))
    after = Browser(_console(platform, SECRET))  # the process after a restart
    other = Browser(_console(platform, OTHER))
    try:
        signed = await before.sign_in()
        assert signed.status_code == 200
        cookie = before.client.cookies[COOKIE]
        for encoded in _encodings(TEST_KEY):
            assert encoded not in cookie
        after.client.cookies.set(COOKIE, cookie, domain="console.test")
        page = await after.get("/members")
        assert page.status_code == 200 and page.url.path == "/members"

        # Another secret: not signed in, and the cookie that does not open is deleted.
        other.client.cookies.set(COOKIE, cookie, domain="console.test")
        refused = await other.client.get("/members")
        assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
        assert 'console_session=""' in refused.headers["set-cookie"]
        # ... and its sign-in page still works at once (the sign-in cookie is set alongside).
        other.client.cookies.set(COOKIE, cookie, domain="console.test")
        assert (await other.sign_in()).status_code == 200

        # Altered: not signed in.
        tampered = cookie[:-3] + ("AAA" if cookie[-3:] != "AAA" else "BBB")
        after.client.cookies.set(COOKIE, tampered, domain="console.test")
        assert (await after.client.get("/members")).status_code == 303
    finally:
        await before.aclose()
        await after.aclose()
        await other.aclose()


async def test_an_expired_session_is_refused_by_every_replica(platform: InProcessPlatform):
    apps = [_console(platform, SECRET), _console(platform, SECRET)]
    browser, _ = _behind(apps)
    try:
        assert (await browser.sign_in()).status_code == 200
        later = time.time() + IDLE + 5
        for app in apps:
            app.state.sessions.clock = lambda: later
        for _ in range(2):
            response = await browser.client.get("/members")
            assert response.status_code == 303 and response.headers["location"].startswith("/login")
    finally:
        await browser.aclose()


async def test_an_api_key_too_long_for_a_cookie_does_not_sign_in(platform: InProcessPlatform):
    browser = Browser(_console(platform, SECRET), client=("192.0.2.41", 1000))
    try:
        await browser.get("/login")
        response = await browser.submit("/login", {"api_key": "x" * 5000})
        assert response.status_code == 401
        assert COOKIE not in browser.client.cookies
    finally:
        await browser.aclose()


def test_a_session_knows_when_it_needs_a_new_cookie():
    session = Session(sid="x")
    assert session.changed is False
    assert session.take_flash() == [] and session.changed is False
    session.say("ok", "done")
    assert session.changed
