"""Sign-in sessions kept on the server: the browser holds only a random, signed session id.

The API key never travels back to the browser. Sessions live in this process (a restart signs
everyone out, several replicas need sticky sessions); each carries its CSRF token, the key's
scopes and a one-shot flash message.

Only a sign-in creates a session. A visitor who has not signed in gets an anonymous `Session`
that is never stored, so no amount of anonymous traffic can fill the store and push the
operators' sessions out of it (`max_sessions` evicts the idlest). What an anonymous page needs
from a session is the CSRF token of its forms (the sign-in and the language switch); it is
double-submitted instead of stored:

- the browser holds a random nonce in the `console_signin` cookie (HttpOnly, SameSite=Strict,
  ending with the browser session), and each form carries the nonce signed with a timestamp
  under this process's secret (`signin_token`);
- a POST passes when the form's token verifies, is at most `SIGNIN_TOKEN_SECONDS` old and
  names the nonce of the cookie that came with it (`check_signin_token`).

Why this design: it is the simplest one that keeps the server free of per-visitor state and
still ties a token to the browser it was given to. A bare HMAC of a nonce in the form, not
bound to a cookie, would be a bearer token that an attacker fetches from /login and plants in
a cross-site form (login CSRF: signing the victim in with the attacker's key). Bound to the
cookie, a forged form needs the victim's nonce, which another site cannot read (HttpOnly) and
whose cookie the browser does not send with a cross-site POST (SameSite=Strict). The signature
and its timestamp let a token expire and refuse tokens this process did not issue. What it
does not stand against is a site that can set this console's cookies (a sibling subdomain);
a `__Host-` cookie name would, but it requires Secure, which plain-HTTP `make run` lacks.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer

COOKIE = "console_session"
SIGNIN_COOKIE = "console_signin"
SIGNIN_TOKEN_SECONDS = 2 * 3600  # a sign-in page left open longer asks for a reload
_NONCE = re.compile(r"[A-Za-z0-9_-]{32,64}")


@dataclass
class Session:
    sid: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    api_key: str | None = None
    scopes: frozenset[str] = frozenset()
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    touched: float = field(default_factory=time.monotonic)

    @property
    def signed_in(self) -> bool:
        return self.api_key is not None

    @classmethod
    def anonymous(cls, csrf: str) -> Session:
        """A visitor who has not signed in: never stored, its token double-submitted."""
        return cls(sid="", csrf=csrf)

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    def can_any(self, *scopes: str) -> bool:
        return any(s in self.scopes for s in scopes)

    def say(self, kind: str, message: str) -> None:
        self.flash.append((kind, message))

    def take_flash(self) -> list[tuple[str, str]]:
        messages, self.flash = self.flash, []
        return messages


class SessionStore:
    def __init__(self, secret: str, *, idle_seconds: float, max_sessions: int) -> None:
        self._signer = URLSafeSerializer(secret, salt="loyalty-console-session")
        self._signin = URLSafeTimedSerializer(secret, salt="loyalty-console-signin-csrf")
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def cookie_value(self, session: Session) -> str:
        return self._signer.dumps(session.sid)

    def load(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            sid = self._signer.loads(cookie)
        except BadSignature:
            return None
        session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            return None
        if time.monotonic() - session.touched > self.idle_seconds:
            self._sessions.pop(sid, None)
            return None
        session.touched = time.monotonic()
        self._sessions.move_to_end(sid)
        return session

    def _new(self) -> Session:
        now = time.monotonic()
        while self._sessions:  # the idle ones first: the oldest touched are at the front
            oldest = next(iter(self._sessions.values()))
            if now - oldest.touched <= self.idle_seconds:
                break
            self._sessions.popitem(last=False)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)  # the longest idle goes first
        session = Session(sid=secrets.token_urlsafe(32))
        self._sessions[session.sid] = session
        return session

    def sign_in(self, old: Session, api_key: str, scopes: frozenset[str]) -> Session:
        """The only way a session is created: a new id and CSRF token at each sign-in, so an
        id planted before it is worth nothing."""
        self.drop(old)
        session = self._new()
        session.api_key = api_key
        session.scopes = scopes
        return session

    def drop(self, session: Session) -> None:
        if session.sid:
            self._sessions.pop(session.sid, None)

    # --- the anonymous forms' CSRF token (double-submit, see the module's docstring) ---------

    @staticmethod
    def new_signin_nonce() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def valid_nonce(nonce: str | None) -> bool:
        return bool(nonce) and _NONCE.fullmatch(nonce or "") is not None

    def signin_token(self, nonce: str) -> str:
        return self._signin.dumps(nonce)

    def check_signin_token(self, token: str, nonce: str | None) -> bool:
        if not self.valid_nonce(nonce) or not token:
            return False
        try:
            signed = self._signin.loads(token, max_age=SIGNIN_TOKEN_SECONDS)
        except BadSignature:  # also an expired one (SignatureExpired)
            return False
        return isinstance(signed, str) and hmac.compare_digest(signed.encode(), str(nonce).encode())
