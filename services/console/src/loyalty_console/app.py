"""The console's app factory: pages, the small JSON API its scripts use, health, errors."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from loyalty_shared.errors import problem_response
from loyalty_shared.observability import configure_logging
from loyalty_shared.settings import PlatformSettings
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import i18n
from .config import NEIGHBOURS, ConsoleSettings
from .i18n import N_
from .neighbours import ApiError, Neighbours
from .pages import auth, campaigns, checkout, dashboard, members, messages, segments
from .sessions import COOKIE, SIGNIN_COOKIE, Sessions
from .throttle import SignInThrottle
from .web import (
    CsrfRefused,
    NeedSignIn,
    NotAllowed,
    cookie_secure,
    current_session,
    login_url,
    render,
)

log = structlog.get_logger(__name__)
STATIC = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    # Scripts and styles come only from this console; pygal's SVGs carry inline styles.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _wants_problem(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/healthz", "/readyz"))


def create_app(
    settings: ConsoleSettings | None = None,
    *,
    platform: PlatformSettings | None = None,
    transports: dict[str, httpx.AsyncBaseTransport] | None = None,
) -> FastAPI:
    settings = settings or ConsoleSettings()
    platform = platform or PlatformSettings()
    configure_logging(platform.log_level)
    neighbours = Neighbours(
        urls={name: settings.url_of(name, platform) for name in NEIGHBOURS},
        timeout=settings.http_timeout_seconds,
        transports=dict(transports or {}),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await neighbours.aclose()

    app = FastAPI(
        title="Loyalty operator console",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.neighbours = neighbours
    # Sessions travel sealed in a cookie (sessions.py says why), so any replica with the same
    # CONSOLE_SESSION_SECRET serves any operator, and a restart signs no one out.
    session_secrets = settings.session_secrets()
    if not session_secrets:
        session_secrets = [secrets.token_urlsafe(32)]
        log.warning(
            "console_session_secret_generated",
            detail="CONSOLE_SESSION_SECRET is not set: a secret was made up for this process; "
            "sign-ins end when it stops and other replicas do not accept them",
        )
    app.state.sessions = Sessions(
        session_secrets,
        idle_seconds=settings.session_idle_minutes * 60,
        max_age_seconds=settings.session_max_hours * 3600,
    )
    app.state.signin_throttle = SignInThrottle(settings.signin_failures_per_minute, 60.0)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def session_cookie_and_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        session = getattr(request.state, "console_session", None)
        secure = cookie_secure(request)
        flags: dict[str, Any] = {"httponly": True, "samesite": "strict", "secure": secure}
        if getattr(request.state, "signed_out", False) or getattr(
            request.state, "session_refused", False
        ):
            # Signed out, or a cookie that no longer opens (expired, another secret, altered).
            response.delete_cookie(COOKIE, path="/", **flags)
        elif session is not None and session.signed_in and session.changed:
            # Signed in, a flash message said or shown, the idle clock stamped again. No
            # Max-Age: the cookie ends with the browser session, the sealed times sooner.
            sessions: Sessions = request.app.state.sessions
            response.set_cookie(COOKIE, sessions.cookie_value(session), path="/", **flags)
        if nonce := getattr(request.state, "signin_nonce", None):
            # An anonymous visitor's first page: the nonce its forms' token is bound to. No
            # Max-Age: it ends with the browser session; the tokens it backs expire sooner.
            response.set_cookie(SIGNIN_COOKIE, nonce, path="/", **flags)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    install_error_pages(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        async def check(name: str) -> str:
            try:
                response = await neighbours.client(name).get("/healthz", timeout=2)
            except httpx.HTTPError as exc:
                return f"unavailable: {type(exc).__name__}"
            return "ok" if response.status_code == 200 else f"unavailable: {response.status_code}"

        results = await asyncio.gather(*(check(n) for n in NEIGHBOURS))
        checks = dict(zip(NEIGHBOURS, results, strict=True))
        # Pages degrade section by section, so the console serves while any service answers.
        ok = any(v == "ok" for v in checks.values())
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return JSONResponse(
            {"status": status if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    for module in (auth, members, checkout, segments, campaigns, dashboard, messages):
        app.include_router(module.router)
    return app


def _error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    session = current_session(request)
    t = i18n.Translator(i18n.choose(request.cookies.get(i18n.COOKIE)))
    body = render(
        request, session, t, "error.html", status=status, title=t.gettext(title), detail=detail
    )
    return HTMLResponse(body, status_code=status)


def install_error_pages(app: FastAPI) -> None:
    """Pages answer with HTML error pages, `/api/*` and probes with RFC 9457 problems."""

    @app.exception_handler(NeedSignIn)
    async def _sign_in(request: Request, exc: NeedSignIn) -> Response:
        if _wants_problem(request):
            return problem_response(401, "unauthorized", "sign in first")
        return Response(status_code=303, headers={"Location": login_url(request)})

    @app.exception_handler(NotAllowed)
    async def _not_allowed(request: Request, exc: NotAllowed) -> Response:
        detail = ", ".join(exc.scopes)
        if _wants_problem(request):
            return problem_response(403, "forbidden", f"this API key lacks the scope {detail}")
        return _error_page(request, 403, N_("Your API key does not allow this"), detail)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        detail = "the form's security token is missing or out of date: reload the page"
        if _wants_problem(request):
            return problem_response(403, "csrf_refused", detail)
        return _error_page(request, 403, N_("The form has expired"), detail)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        if exc.status == 401:  # the key was withdrawn while signed in
            request.state.signed_out = True  # the middleware deletes the cookie
            return Response(status_code=303, headers={"Location": login_url(request)})
        status = exc.status if 400 <= exc.status < 600 else 502
        if status == 500:
            status = 502  # a neighbour's bug is not this console's: a bad gateway
        if _wants_problem(request):
            return problem_response(status, exc.code, exc.detail, errors=exc.errors)
        title = N_("Not found") if status == 404 else N_("The service refused the request")
        if exc.code == "service_unavailable" or status >= 502:
            title = N_("A service is unavailable")
        return _error_page(request, status, title, exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        phrase = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) else phrase
        if _wants_problem(request):
            return problem_response(exc.status_code, _code(exc.status_code), detail)
        titles = {404: N_("Not found"), 405: N_("Not allowed here")}
        return _error_page(request, exc.status_code, titles.get(exc.status_code, phrase), detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        if _wants_problem(request):
            return problem_response(422, "validation_error", detail, errors=errors)
        return _error_page(request, 422, N_("The request is not valid"), detail)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("console_unhandled_error", path=request.url.path)
        if _wants_problem(request):
            return problem_response(500, "internal_error", "an unexpected error occurred")
        return _error_page(request, 500, N_("Something went wrong"), "an unexpected error occurred")


def _code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 403: "forbidden"}.get(status, "http_error")
