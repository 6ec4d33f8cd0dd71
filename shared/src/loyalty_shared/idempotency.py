"""Request guards for every write: body size (413), JSON media type (415), Idempotency-Key.

The same Idempotency-Key with the same body answers the first response again and does nothing
more; with another body it is refused (422 `idempotency_key_reused`). Keys are scoped by the
caller's API key. A key whose first request is still running answers 409
`idempotency_key_in_progress`, however long it runs. The answer commits with the request's effect
(`keyed_request.py`), before the response leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import key_id
from .errors import PROBLEM_MEDIA_TYPE, database_unavailable, problem_body
from .jobs import Job
from .keyed_request import KeyedRequest, running

if TYPE_CHECKING:
    from .service import Runtime

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32  # no request of the contract nests deeper than a handful of levels
# A running request renews its key's lease every third of this; a process that dies stops
# renewing, and a retry may take the key over once the lease has lapsed.
LEASE_SECONDS = 10
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class _TooLarge(Exception):
    pass


async def _send_problem(
    send: Send,
    status: int,
    code: str,
    detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    **extra: Any,
) -> None:
    body = orjson.dumps(problem_body(status, code, detail, **extra))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class Claim:
    """A request's hold on its key: `attempt` names this run; only it may store the answer."""

    principal: str
    key: str
    attempt: str


class IdempotencyStore:
    """The `idempotency_keys` table. A running request holds its key by a lease it renews; a
    key whose lease lapsed belongs to a process that died before it stored an answer (and so,
    the answer committing with the effect, before any effect): a retry takes it over."""

    def __init__(self, engine: AsyncEngine, after_commit: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.after_commit = after_commit

    async def claim(
        self, principal: str, key: str, method: str, path: str, request_hash: str
    ) -> tuple[str, Any]:
        """("new", Claim) | ("replay", (status, body, headers)) | ("mismatch" | "in_progress",
        None)."""
        claim = Claim(principal, key, secrets.token_hex(8))
        params = {
            "p": principal,
            "k": key,
            "m": method,
            "path": path,
            "h": request_hash,
            "a": claim.attempt,
            "lease": LEASE_SECONDS,
        }
        async with self.engine.begin() as conn:
            inserted = await conn.scalar(
                text(
                    "INSERT INTO idempotency_keys "
                    "(principal, key, method, path, request_hash, attempt, lease_until) "
                    "VALUES (:p, :k, :m, :path, :h, :a, now() + make_interval(secs => :lease)) "
                    "ON CONFLICT DO NOTHING RETURNING 1"
                ),
                params,
            )
            if inserted:
                return "new", claim
            row = (
                await conn.execute(
                    text(
                        "SELECT request_hash, status, response_body, response_headers, "
                        # a row of before the lease: its first minute counts as held
                        "coalesce(lease_until, created_at + interval '60 seconds') < now() "
                        "AS lapsed "
                        "FROM idempotency_keys WHERE principal = :p AND key = :k FOR UPDATE"
                    ),
                    params,
                )
            ).one()
            if row.request_hash != request_hash:
                return "mismatch", None
            if row.status is not None:
                return "replay", (row.status, row.response_body, row.response_headers)
            if not row.lapsed:
                return "in_progress", None
            # The first attempt died without an answer, so without an effect: this one runs.
            await conn.execute(
                text(
                    "UPDATE idempotency_keys SET attempt = :a, "
                    "lease_until = now() + make_interval(secs => :lease) "
                    "WHERE principal = :p AND key = :k"
                ),
                params,
            )
            return "new", claim

    async def renew(self, claim: Claim) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE idempotency_keys SET lease_until = now() + make_interval(secs => :s) "
                    "WHERE principal = :p AND key = :k AND attempt = :a AND status IS NULL"
                ),
                {"p": claim.principal, "k": claim.key, "a": claim.attempt, "s": LEASE_SECONDS},
            )

    async def complete(
        self,
        claim: Claim,
        status: int,
        body: bytes,
        headers: dict[str, str],
        held: AsyncConnection | None,
    ) -> bool:
        """Store the answer in the request's held transaction (or in one of its own) and commit
        both. False: the key was taken over (this run's lease lapsed), so nothing of this run
        commits."""
        conn = held or await self.engine.connect()
        try:
            if held is None:
                await conn.begin()
            stored = await conn.scalar(
                text(
                    "UPDATE idempotency_keys SET status = :s, response_body = :b, "
                    "response_headers = CAST(:h AS jsonb), lease_until = NULL "
                    "WHERE principal = :p AND key = :k AND attempt = :a AND status IS NULL "
                    "RETURNING 1"
                ),
                {
                    "s": status,
                    "b": body,
                    "h": orjson.dumps(headers).decode(),
                    "p": claim.principal,
                    "k": claim.key,
                    "a": claim.attempt,
                },
            )
            if not stored:
                await conn.rollback()
                return False
            await conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.rollback()
            raise
        finally:
            await conn.close()
        if held is not None and self.after_commit is not None:
            self.after_commit()
        return True

    async def release(self, claim: Claim) -> None:
        """No answer to keep (a 5xx, a crash of the handler): the key is free for a retry."""
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "DELETE FROM idempotency_keys WHERE principal = :p AND key = :k "
                    "AND attempt = :a AND status IS NULL"
                ),
                {"p": claim.principal, "k": claim.key, "a": claim.attempt},
            )


async def forget_answers_about(conn: AsyncConnection, subject: str) -> int:
    """Delete the stored answers (for replays of an Idempotency-Key) to requests about
    `subject`, an erased member's id (in the answer or in the request's path), in the
    erasure's transaction: they are copies of what the member was (profile, identities,
    feedback text) and would outlive the erasure otherwise. A retry of such a request after
    the erasure is handled as a new one. Answers how many went. The search reads every stored
    answer: erasures are rare, and ids are long enough not to turn up by chance."""
    result = await conn.execute(
        text(
            "DELETE FROM idempotency_keys WHERE response_body IS NOT NULL "
            "AND (position(convert_to(:subject, 'UTF8') in response_body) > 0 "
            "OR position(:subject in path) > 0)"
        ),
        {"subject": subject},
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def purge_idempotency_keys(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    """The platform job every service runs: forget Idempotency-Keys older than the retention
    (`LOYALTY_IDEMPOTENCY_RETENTION_HOURS`, 24 by default). A client retries within minutes;
    after the retention the same key is a new request."""
    cutoff = as_of - timedelta(hours=runtime.settings.idempotency_retention_hours)
    async with runtime.transaction() as conn:
        result = await conn.execute(
            text("DELETE FROM idempotency_keys WHERE created_at < :cutoff"), {"cutoff": cutoff}
        )
    return {"keys_purged": int(getattr(result, "rowcount", 0) or 0), "cutoff": cutoff.isoformat()}


PURGE_IDEMPOTENCY_KEYS = Job(
    "purge-idempotency-keys",
    purge_idempotency_keys,
    every=timedelta(hours=1),
    description="forget Idempotency-Keys (and their stored answers) older than the retention",
)


class WriteGuardMiddleware:
    def __init__(self, app: ASGIApp, store_factory: Any) -> None:
        self.app = app
        self.store_factory = store_factory  # called per request: the engine starts with the app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await _send_problem(
                send, 413, "payload_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes"
            )
            return
        try:
            body = await _read_body(receive)
        except _TooLarge:
            await _send_problem(
                send, 413, "payload_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes"
            )
            return
        content_type = headers.get("content-type", "")
        if body and "json" not in content_type.split(";")[0]:
            await _send_problem(
                send,
                415,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)",
            )
            return
        if (
            body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH  # cheap: most bodies stop here
            and json_depth(body) > MAX_JSON_DEPTH
        ):
            msg = f"the JSON nests deeper than {MAX_JSON_DEPTH} levels"
            await _send_problem(
                send, 422, "validation_error", msg, errors=[{"loc": ["body"], "msg": msg}]
            )
            return
        if not _utf8(body):  # JSON is UTF-8 text (RFC 8259); the parser would answer a bare 400
            msg = "body is not valid JSON: it is not UTF-8 text"
            await _send_problem(
                send, 422, "validation_error", msg, errors=[{"loc": ["body"], "msg": msg}]
            )
            return
        replay_receive = _replaying(body, receive)
        idem_key = headers.get("idempotency-key")
        if not idem_key or scope["method"] != "POST":
            await self.app(scope, replay_receive, send)
            return
        if len(idem_key) > 255:
            await _send_problem(
                send, 422, "validation_error", "Idempotency-Key must be at most 255 characters"
            )
            return
        await self._idempotent(scope, replay_receive, send, headers, idem_key, body)

    async def _idempotent(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        idem_key: str,
        body: bytes,
    ) -> None:
        store: IdempotencyStore = self.store_factory()
        principal = key_id(_bearer_token(headers.get("authorization", "")))
        path = scope["path"] + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        digest = hashlib.sha256(scope["method"].encode() + b" " + path.encode() + b"\n" + body)
        try:
            outcome, found = await store.claim(
                principal, idem_key, scope["method"], path, digest.hexdigest()
            )
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            await _send_unavailable(send)
            return
        if outcome == "mismatch":
            await _send_problem(
                send,
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request",
            )
            return
        if outcome == "in_progress":
            await _send_in_progress(send)
            return
        if outcome == "replay":
            status, response_body, response_headers = found
            raw_headers = [(k.encode(), v.encode()) for k, v in (response_headers or {}).items()]
            raw_headers.append((b"idempotent-replayed", b"true"))
            await send({"type": "http.response.start", "status": status, "headers": raw_headers})
            await send({"type": "http.response.body", "body": response_body or b""})
            return
        await self._run_keyed(scope, receive, send, store, found)

    async def _run_keyed(
        self, scope: Scope, receive: Receive, send: Send, store: IdempotencyStore, claim: Claim
    ) -> None:
        """Run the request holding its key; store its answer with its effect, then answer."""
        response: list[Message] = []

        async def hold_back(message: Message) -> None:
            response.append(message)  # nothing leaves before the answer is stored

        keyed = KeyedRequest()
        renewing = asyncio.create_task(_renew_while_running(store, claim))
        try:
            with running(keyed):
                await self.app(scope, receive, hold_back)
        except BaseException:
            await keyed.rollback()
            with contextlib.suppress(Exception):
                await store.release(claim)
            raise
        finally:
            renewing.cancel()
        start = next((m for m in response if m["type"] == "http.response.start"), None)
        status = start["status"] if start else 500
        if status >= 500:  # not an answer: nothing of it commits, and the client may retry
            await keyed.rollback()
            with contextlib.suppress(Exception):
                await store.release(claim)
        else:
            kept = {
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in (start or {}).get("headers", [])
                if k.lower() in (b"content-type", b"location")
            }
            answer = b"".join(
                m.get("body", b"") for m in response if m["type"] == "http.response.body"
            )
            try:
                stored = await store.complete(claim, status, answer, kept, keyed.take())
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                # the commit of effect and answer failed together: neither happened
                await _send_unavailable(send)
                return
            if not stored:
                await _send_in_progress(send)
                return
        for message in response:
            await send(message)


async def _renew_while_running(store: IdempotencyStore, claim: Claim) -> None:
    while True:
        await asyncio.sleep(LEASE_SECONDS / 3)
        try:
            await store.renew(claim)
        except Exception as exc:  # an outage: the request itself will meet it too
            log.warning("idempotency_lease_not_renewed", error=type(exc).__name__)


async def _send_unavailable(send: Send) -> None:
    await _send_problem(
        send,
        503,
        "service_unavailable",
        "the database is unavailable; retry later with the same key",
        [(b"retry-after", b"5")],
    )


async def _send_in_progress(send: Send) -> None:
    await _send_problem(
        send,
        409,
        "idempotency_key_in_progress",
        "a request with this Idempotency-Key is still being processed; retry later",
        [(b"retry-after", b"1")],
    )


def _bearer_token(authorization: str) -> str:
    """The API key as `ApiKeys.authenticate` reads it, so that one key is one principal."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else authorization


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def json_depth(body: bytes) -> int:
    """How deep brackets nest in a JSON text (strings skipped), without parsing it: a hostile
    body of a million `[` is refused before any parser recurses into it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


async def _read_body(receive: Receive) -> bytes:
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.extend(message.get("body", b""))
        if len(chunks) > MAX_BODY_BYTES:
            raise _TooLarge
        if not message.get("more_body", False):
            break
    return bytes(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
