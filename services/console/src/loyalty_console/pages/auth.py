"""Sign-in with an API key, sign-out, and the language switch."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from .. import i18n
from ..scopes import UnknownKey, discover_scopes
from ..web import check_csrf, current_session, render, safe_next, stores, text

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
    request: Request, *, error: str | None = None, status: int = 200, next_url: str = ""
) -> HTMLResponse:
    session = current_session(request)
    t = i18n.Translator(i18n.choose(request.cookies.get(i18n.COOKIE)))
    body = render(request, session, t, "login.html", error=error, next_url=next_url)
    return HTMLResponse(body, status_code=status)


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
    next_url = safe_next(text(form, "next"), "")
    if not key:
        return _login_page(
            request, error=t.gettext("Enter your API key."), status=422, next_url=next_url
        )
    sessions, neighbours = stores(request)
    try:
        scopes = await discover_scopes(neighbours.as_operator(key))
    except UnknownKey:
        return _login_page(
            request,
            error=t.gettext("The services do not know this API key."),
            status=401,
            next_url=next_url,
        )
    signed_in = sessions.sign_in(session, key, scopes)
    request.state.console_session = signed_in
    return Response(status_code=303, headers={"Location": next_url or _home(scopes)})


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    session = current_session(request)
    await check_csrf(request, session)
    sessions, _ = stores(request)
    sessions.drop(session)
    request.state.console_session = None
    request.state.signed_out = True
    return Response(status_code=303, headers={"Location": "/login"})


@router.post("/locale", include_in_schema=False)
async def choose_locale(request: Request) -> Response:
    session = current_session(request)
    form = await check_csrf(request, session)
    assert form is not None
    locale = i18n.choose(text(form, "locale"))
    response = Response(status_code=303, headers={"Location": safe_next(text(form, "next"), "/")})
    response.set_cookie(
        i18n.COOKIE,
        locale,
        max_age=400 * 24 * 3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
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
