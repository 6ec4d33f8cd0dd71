"""What every page shares: the request's session, language, API client and rendering, the
CSRF check on every form, and the exceptions that become sign-in redirects or error pages."""

from __future__ import annotations

import hmac
import secrets
import unicodedata
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData

from . import i18n
from .neighbours import Api, Neighbours
from .sessions import COOKIE, SIGNIN_COOKIE, Session, Sessions

TEMPLATES = Path(__file__).parent / "templates"

environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html", "svg"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

# What the navigation offers, and the scope each entry needs (contract §3).
NAVIGATION = [
    ("/members", "Members", ("members:read",)),
    ("/checkout", "Checkout", ("events:write", "points:write")),
    ("/segments", "Segments", ("members:read",)),
    ("/campaigns", "Campaigns", ("members:read",)),
    ("/dashboard", "Dashboard", ("members:read",)),
    ("/messages", "Messages", ("members:read",)),
]


class NeedSignIn(Exception):
    pass


class NotAllowed(Exception):
    def __init__(self, scopes: tuple[str, ...]) -> None:
        super().__init__(", ".join(scopes))
        self.scopes = scopes


class CsrfRefused(Exception):
    pass


class FormError(Exception):
    """Input the console itself refuses before asking a service."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Console:
    """One request as the console sees it."""

    def __init__(self, request: Request, session: Session, api: Api | None) -> None:
        self.request = request
        self.session = session
        self.api_or_none = api
        self.t = i18n.Translator(i18n.choose(request.cookies.get(i18n.COOKIE)))

    @property
    def api(self) -> Api:
        if self.api_or_none is None:
            raise NeedSignIn()
        return self.api_or_none

    def _(self, message: str, /, **values: Any) -> str:
        return self.t.gettext(message, **values)

    def require(self, *scopes: str) -> None:
        """At least one of the scopes, or the page says what is missing."""
        if not self.session.can_any(*scopes):
            raise NotAllowed(scopes)

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(render(self.request, self.session, self.t, template, **context), status)

    def redirect(self, url: str) -> HTMLResponse:
        return HTMLResponse("", 303, headers={"Location": url})


def render(
    request: Request, session: Session, t: i18n.Translator, template: str, **context: Any
) -> str:
    nav = [
        (href, t.gettext(label)) for href, label, scopes in NAVIGATION if session.can_any(*scopes)
    ]
    return environment.get_template(template).render(
        request=request,
        path=request.url.path,
        session=session,
        csrf=session.csrf,
        can=session.can,
        can_any=session.can_any,
        t=t,
        _=t.gettext,
        locale=t.locale,
        locales=i18n.LOCALES,
        nav=nav,
        flash=session.take_flash(),
        new_key=new_idempotency_key,
        **context,
    )


def new_idempotency_key() -> str:
    """Generated when a form is rendered: a double submit of that form is one request."""
    return "console-" + secrets.token_urlsafe(18)


def stores(request: Request) -> tuple[Sessions, Neighbours]:
    return request.app.state.sessions, request.app.state.neighbours


def current_session(request: Request) -> Session:
    """The browser's signed-in session, opened from its cookie, or an anonymous one that gets
    no cookie: it carries only the token of the anonymous forms (sign-in, language),
    double-submitted with the `console_signin` cookie (sessions.py says why)."""
    cached = getattr(request.state, "console_session", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    sessions, _ = stores(request)
    cookie = request.cookies.get(COOKIE)
    session = sessions.load(cookie)
    if session is None:
        if cookie:
            request.state.session_refused = True  # the middleware deletes it
        nonce = request.cookies.get(SIGNIN_COOKIE)
        if not sessions.valid_nonce(nonce):
            nonce = sessions.new_signin_nonce()
            request.state.signin_nonce = nonce  # the middleware sets the cookie
        session = Session.anonymous(sessions.signin_token(str(nonce)))
    request.state.console_session = session
    return session


def cookie_secure(request: Request) -> bool:
    """`Secure` on the console's cookies: always with CONSOLE_COOKIE_SECURE=true, else when
    the request came over https, as the connection says or a proxy that uvicorn trusts
    (FORWARDED_ALLOW_IPS) reports in X-Forwarded-Proto."""
    if request.app.state.settings.cookie_secure == "true":
        return True
    return request.url.scheme == "https"


async def _console(request: Request) -> Console:
    session = current_session(request)
    _, neighbours = stores(request)
    if not session.signed_in or session.api_key is None:
        raise NeedSignIn()
    return Console(request, session, neighbours.as_operator(session.api_key))


async def check_csrf(request: Request, session: Session) -> FormData | None:
    form = await request.form() if request.method == "POST" else None
    sent = request.headers.get("x-csrf-token") or (form.get("csrf") if form else None)
    if not isinstance(sent, str) or not sent:
        raise CsrfRefused()
    if session.signed_in:
        ok = hmac.compare_digest(sent.encode(), session.csrf.encode())
    else:
        sessions, _ = stores(request)
        ok = sessions.check_signin_token(sent, request.cookies.get(SIGNIN_COOKIE))
    if not ok:
        raise CsrfRefused()
    return form


async def _action(request: Request) -> Console:
    console = await _console(request)
    await check_csrf(request, console.session)
    return console


PageDep = Annotated[Console, Depends(_console)]
ActionDep = Annotated[Console, Depends(_action)]


# Characters that never belong in a redirect target, raw or percent-decoded: controls (C0,
# DEL, C1), format characters (zero-width, bidi overrides, BOM), surrogates, private-use and
# unassigned code points, and every kind of space or line break. Browsers strip tabs and line
# breaks from a URL (`/\t/evil` becomes `//evil`, another host) and some treat other spaces
# and invisible characters just as loosely.
_NEVER_IN_NEXT = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_MAX_NEXT = 2048


def _plain_path(value: str, *, decoded: bool) -> bool:
    """`/` then anything but a second `/`, a backslash or a character above. Once decoded, a
    plain space may remain (`?q=Mei%20Lin` is an ordinary search): what a browser strips from a
    Location are the raw characters, and those are refused."""
    if not value.startswith("/") or value.startswith("//"):
        return False
    for char in value:
        if char == " " and decoded:
            continue
        if char == "\\" or char.isspace() or unicodedata.category(char) in _NEVER_IN_NEXT:
            return False
    return True


def safe_next(target: str | None, default: str = "/members") -> str:
    """A redirect target after sign-in (or a language switch): only a plain path of this
    console, else `default`. No scheme, no host (`//host`, `/\\host`), no control, space or
    invisible character, and the same after every percent-decoding (`/%2F%2Fhost`,
    `/%5Chost`, `/%09/host`, `/%252F...`), in case something on the way decodes it again."""
    if not isinstance(target, str) or len(target) > _MAX_NEXT:
        return default
    if not _plain_path(target, decoded=False):
        return default
    value = target
    for _ in range(4):
        decoded = unquote(value)
        if decoded == value:
            # A Location header is ASCII: letters beyond it (`/segments/大客户`) go encoded.
            return "".join(c if c.isascii() else quote(c) for c in target)
        if not _plain_path(decoded, decoded=True):
            return default
        value = decoded
    return default  # still changing after four decodings: nobody sends that by accident


def login_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(target, safe="")


# --- form reading --------------------------------------------------------------------------


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def required(form: FormData, name: str, message: str) -> str:
    value = text(form, name)
    if not value:
        raise FormError(name, message)
    return value


def integer(form: FormData, name: str, message: str, *, allow_negative: bool = False) -> int:
    raw = text(form, name)
    try:
        value = int(raw)
    except ValueError:
        raise FormError(name, message) from None
    if value == 0 or (value < 0 and not allow_negative):
        raise FormError(name, message)
    return value


def money_minor(form: FormData, name: str, message: str, *, allow_zero: bool = False) -> int:
    """Yuan as typed at a till ("12.5", "100") → fen; more than 2 decimals is refused."""
    raw = text(form, name).replace(",", "").replace("¥", "").replace("￥", "")
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        raise FormError(name, message) from None
    if not amount.is_finite() or amount < 0 or (amount == 0 and not allow_zero):
        raise FormError(name, message)
    minor = amount * 100
    if minor != minor.to_integral_value() or minor > 10**12:
        raise FormError(name, message)
    return int(minor)
