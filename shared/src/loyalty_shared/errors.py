"""RFC 9457 problem responses with stable machine `code`s, and the handlers that produce them."""

from __future__ import annotations

import copy
import json
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = structlog.get_logger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


RESERVED_MEMBERS = frozenset({"type", "title", "status", "detail", "code", "instance"})


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        http_status: int,
        code: str,
        detail: str,
        /,
        *,
        title: str | None = None,
        **extra: Any,
    ) -> None:
        clash = RESERVED_MEMBERS & set(extra)
        if clash:  # a programming error: it would overwrite the problem's own members
            raise ValueError(f"problem extension members may not be named {sorted(clash)}")
        super().__init__(detail)
        self.status = http_status
        self.code = code
        self.detail = detail
        self.title = title or HTTPStatus(http_status).phrase
        self.extra = extra


class NotFound(ProblemError):
    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(404, "not_found", detail, **extra)


class Conflict(ProblemError):
    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(409, code, detail, **extra)


class Unprocessable(ProblemError):
    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(422, code, detail, **extra)


def problem_body(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:loyalty:problem:{code}",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def problem_response(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, code, detail, **extra),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


# The problem document as OpenAPI declares it: every /v1 operation answers its errors with one.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document (application/problem+json); clients switch "
    "on `code`. Some problems carry more members (e.g. `member_id` with `member_exists`).",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "examples": ["urn:loyalty:problem:not_found"]},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "examples": ["validation_error"]},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "with `validation_error`: what is wrong, where",
            "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}

# What every /v1 operation may answer, whatever its own code does (auth, the write guard, the
# request validation, a database outage), and what it says when the operation has no word of its
# own for that status.
_COMMON_PROBLEMS = {
    401: "no API key, or one that is not known (`unauthorized`)",
    403: "the API key lacks the scope of this endpoint (`forbidden`)",
    422: "the request is not valid (`validation_error`)",
    429: "this API key is over its rate limit; retry after `Retry-After` seconds (`rate_limited`)",
    503: "the database is unreachable; retry later (`service_unavailable`)",
}
# Headers a common problem carries, declared with it.
_PROBLEM_HEADERS: dict[int, dict[str, Any]] = {
    429: {
        "Retry-After": {
            "description": "whole seconds to wait before the key may send again",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}
_WRITE_PROBLEMS = {
    413: "the body is larger than 1 MiB (`payload_too_large`)",
    415: "the body is not JSON (`unsupported_media_type`)",
}
_POST_PROBLEMS = {
    409: "a request with this Idempotency-Key is still running; retry after `Retry-After` "
    "seconds (`idempotency_key_in_progress`)",
    422: "`validation_error`, or an Idempotency-Key used with another body "
    "(`idempotency_key_reused`)",
}
_PATH_PROBLEMS = {404: "no such resource (`not_found`)"}
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """Declare the problem responses of every /v1 operation in an OpenAPI document, in place:
    the statuses the shared plumbing can answer, and an `application/problem+json` body of the
    `Problem` schema for every 4xx and 5xx (FastAPI's own 422 body is replaced, as it is on the
    wire)."""
    ref = {"$ref": "#/components/schemas/Problem"}
    for path, operations in openapi.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            wanted = dict(_COMMON_PROBLEMS)
            if method in ("post", "put", "patch", "delete"):
                wanted.update(_WRITE_PROBLEMS)
            if method == "post":
                wanted.update(_POST_PROBLEMS)
            if "{" in path:
                wanted.update(_PATH_PROBLEMS)
            for status, description in wanted.items():
                response = responses.setdefault(str(status), {"description": description})
                if status in _PROBLEM_HEADERS:
                    # a copy each: a YAML dump would tie shared objects with anchors
                    response.setdefault("headers", copy.deepcopy(_PROBLEM_HEADERS[status]))
            for status, response in responses.items():
                if status[0] not in "45":
                    continue
                content = response.get("content", {})
                schema = content.get("application/json", {}).get("schema", {})
                if not content or schema.get("$ref", "").endswith("/HTTPValidationError"):
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": ref}}
                    if response.get("description") == "Validation Error":
                        response["description"] = wanted.get(422, _COMMON_PROBLEMS[422])
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in _FASTAPI_VALIDATION_SCHEMAS:  # unused now, unless a service refers to them
        if f'"#/components/schemas/{name}"' not in json.dumps(openapi):
            schemas.pop(name, None)
    return openapi


def _loc(loc: tuple[Any, ...] | list[Any]) -> list[Any]:
    return [part for part in loc]


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        msg = err.get("msg", "invalid value")
        if err.get("type") == "json_invalid":
            msg = "body is not valid JSON: " + str(err.get("ctx", {}).get("error", "parse error"))
        errors.append({"loc": _loc(err.get("loc", ())), "msg": msg, "type": err.get("type")})
    return errors


# What a database says when it is unavailable (contract §2 and §3), by SQLSTATE: a connection
# exception (08), insufficient resources (53: out of connection slots, memory or disk),
# operator intervention (57P: shutting down, crashed, starting up), a database that does not
# allow connections (55000), a read-only replica after a failover (25006).
OUTAGE_SQLSTATES = ("08", "53", "57P", "55000", "25006")
# A conflict with concurrent work that the same work, run again, gets past: serialization
# failure, deadlock, lock not available (a lock timeout).
CONFLICT_SQLSTATES = ("40001", "40P01", "55P03")


def sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a database error, wrapped by SQLAlchemy or raw ("" for anything else)."""
    if isinstance(exc, DBAPIError):
        exc = exc.orig  # type: ignore[assignment]
    return str(getattr(exc, "sqlstate", "") or "")


def conflict(exc: BaseException) -> bool:
    """A transaction that lost to concurrent work; the same work, run again, gets past it."""
    return sqlstate(exc).startswith(CONFLICT_SQLSTATES)


def database_unavailable(exc: BaseException) -> bool:
    """The one reading of "the database cannot do this now, whatever the request or event":
    it is unreachable, refuses or drops connections, is starting up, shutting down, full or
    read-only, the pool has no free connection, or the transaction conflicted with concurrent
    work. Such a failure is nobody's fault: an HTTP request answers 503 and may be retried, a
    consumer retries the same events without limit, a job runs again. Anything else a database
    says (a constraint, a bad value, a bug in a statement) is the work's own fault."""
    if isinstance(exc, OSError | InterfaceError | PoolTimeout | ConnectionError):
        return True  # PoolTimeout: every connection of the pool is busy
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    state = sqlstate(exc)
    if state:
        return state.startswith(OUTAGE_SQLSTATES) or state.startswith(CONFLICT_SQLSTATES)
    # A driver error without a SQLSTATE raised while connecting or on a closed connection.
    return isinstance(exc, OperationalError)


def _refused_value(exc: Exception) -> bool:
    """The database refused a value (SQLSTATE class 22, data exception): the client's fault."""
    return sqlstate(exc).startswith("22")


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            title=exc.title,
            instance=request.url.path,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        detail = (
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
            or "the request is not valid"
        )
        return problem_response(
            422, "validation_error", detail, instance=request.url.path, errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(
            exc.status_code,
            code,
            detail,
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    @app.exception_handler(PoolTimeout)
    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        if _refused_value(exc):
            # A value the database cannot store (e.g. U+0000 in text) is bad input, not an outage.
            return problem_response(
                422,
                "validation_error",
                "the request holds a value that cannot be stored",
                instance=request.url.path,
                errors=[{"loc": ["request"], "msg": "a value cannot be stored", "type": "value"}],
            )
        if not database_unavailable(exc):
            log.exception("database_error", path=request.url.path)
            return problem_response(
                500, "internal_error", "an unexpected error occurred", instance=request.url.path
            )
        # A database that cannot be reached is an outage, not a bug: say so, and let the
        # client retry (with its Idempotency-Key) once it is back.
        log.warning("dependency_unavailable", error_type=type(exc).__name__, path=request.url.path)
        return problem_response(
            503,
            "service_unavailable",
            "a dependency of this service is unavailable; retry later",
            instance=request.url.path,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(OverflowError)
    async def _out_of_range(request: Request, exc: OverflowError) -> JSONResponse:
        # A value of the request took arithmetic out of its type's range (e.g. a time near the
        # year 9999 plus a notice period): bad input, not a bug; nothing was committed.
        log.warning("value_out_of_range", path=request.url.path, error=str(exc))
        return problem_response(
            422,
            "validation_error",
            "a value in the request is out of range",
            instance=request.url.path,
            errors=[{"loc": ["request"], "msg": "a value is out of range", "type": "value"}],
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if database_unavailable(exc):  # a driver error that SQLAlchemy did not wrap
            return await _unavailable(request, exc)
        log.exception("unhandled_error", path=request.url.path)
        return problem_response(
            500, "internal_error", "an unexpected error occurred", instance=request.url.path
        )
