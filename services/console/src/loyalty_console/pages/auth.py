"""Sign-in with an API key, sign-out, and the language switch."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from .. import i18n
from ..scopes import Throttled, UnknownKey, discover_scopes
from ..throttle import SignInThrottle, retry_after
from ..web import check_csrf, cookie_secure, current_session, render, safe_next, stores, text

router = APIRouter()


def _home(scopes: frozenset[str]) -> str:
    if "members:read" in scopes:
        return "/members"
    if scopes & {"events:write", "points:write"}:
        return "/checkout"
    return "/account"


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    session = current_session(request)
    target = _home(session.scopes) if session.signed_in else "/login"
    return Response(status_code=303, headers={"Location": target})


def _login_page(
    request: Request,
    *,
    error: str | None = None,
    status: int = 200,
    next_url: str = "",
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    session = current_session(request)
    t = i18n.Translator(i18n.choose(request.cookies.get(i18n.COOKIE)))
    body = render(request, session, t, "login.html", error=error, next_url=next_url)
    return HTMLResponse(body, status_code=status, headers=headers)


def _wait_page(request: Request, seconds: int, next_url: str) -> HTMLResponse:
    t = i18n.Translator(i18n.choose(request.cookies.get(i18n.COOKIE)))
    message = t.gettext(
        "Too many failed sign-ins from this address. Wait %(seconds)s seconds and try again.",
        seconds=seconds,
    )
    return _login_page(
        request,
        error=message,
        status=429,
        next_url=next_url,
        headers={"Retry-After": str(seconds)},
    )


def _next(form: FormData) -> str:
    """`next` as sent (not stripped: a leading space or tab is a reason to refuse it)."""
    value = form.get("next")
    return safe_next(value if isinstance(value, str) else "", "")


def _client(request: Request) -> str | None:
    """The client's address as uvicorn reports it: behind a proxy in FORWARDED_ALLOW_IPS,
    the address the proxy forwarded in X-Forwarded-For."""
    return request.client.host if request.client else None


@router.get("/login", include_in_schema=False)
async def login_form(request: Request, next: str = "") -> Response:
    session = current_session(request)
    if session.signed_in:
        return Response(status_code=303, headers={"Location": safe_next(next, "/")})
    return _login_page(request, next_url=safe_next(next, ""))


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    session = current_session(request)
    form = await check_csrf(request, session)
    assert form is not None
    t = i18n.Translator(i18n.choose(request.cookies.get(i18n.COOKIE)))
    key = text(form, "api_key")
    next_url = _next(form)
    if not key:
        return _login_page(
            request, error=t.gettext("Enter your API key."), status=422, next_url=next_url
        )
    sessions, neighbours = stores(request)
    throttle: SignInThrottle = request.app.state.signin_throttle
    client = _client(request)
    if not sessions.api_key_fits(key):
        # Longer than any key the services issue and than a session cookie can carry: a
        # failed sign-in, answered without asking the services.
        throttle.failed(client)
        return _login_page(
            request,
            error=t.gettext("The services do not know this API key."),
            status=401,
            next_url=next_url,
        )
    # Too many failures from this address: answered here, before any probe reaches the
    # services, unless the key has signed in on this console before (throttle.py says why).
    wait = throttle.wait(client)
    if wait > 0 and not throttle.known(key):
        return _wait_page(request, retry_after(wait), next_url)
    try:
        scopes = await discover_scopes(neighbours.as_operator(key))
    except UnknownKey:
        throttle.failed(client)
        return _login_page(
            request,
            error=t.gettext("The services do not know this API key."),
            status=401,
            next_url=next_url,
        )
    except Throttled as exc:
        throttle.failed(client)
        seconds = exc.retry_after or retry_after(throttle.wait(client) or 60.0)
        return _wait_page(request, seconds, next_url)
    throttle.remember(key)
    request.state.console_session = sessions.sign_in(key, scopes)
    request.state.session_refused = False  # a stale cookie is replaced, not deleted
    return Response(status_code=303, headers={"Location": next_url or _home(scopes)})


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    session = current_session(request)
    await check_csrf(request, session)
    # The cookie is deleted; nothing is kept to revoke a copy of it, which lives until its
    # idle or absolute lifetime ends (sessions.py).
    request.state.console_session = None
    request.state.signed_out = True
    return Response(status_code=303, headers={"Location": "/login"})


@router.post("/locale", include_in_schema=False)
async def choose_locale(request: Request) -> Response:
    session = current_session(request)
    form = await check_csrf(request, session)
    assert form is not None
    locale = i18n.choose(text(form, "locale"))
    response = Response(status_code=303, headers={"Location": _next(form) or "/"})
    response.set_cookie(
        i18n.COOKIE,
        locale,
        max_age=400 * 24 * 3600,
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request),
        path="/",
    )
    return response


@router.get("/account", include_in_schema=False)
async def account(request: Request) -> Response:
    session = current_session(request)
    if not session.signed_in:
        return Response(status_code=303, headers={"Location": "/login?next=/account"})
    t = i18n.Translator(i18n.choose(request.cookies.get(i18n.COOKIE)))
    return HTMLResponse(render(request, session, t, "account.html"))
