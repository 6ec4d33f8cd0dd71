"""Sign-in sessions kept on the server: the browser holds only a random, signed session id.

The API key never travels back to the browser. Sessions live in this process (a restart signs
everyone out, several replicas need sticky sessions); each carries its CSRF token, the key's
scopes and a one-shot flash message.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from itsdangerous import BadSignature, URLSafeSerializer

COOKIE = "console_session"


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
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions

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

    def new(self) -> Session:
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)  # the longest idle goes first
        session = Session(sid=secrets.token_urlsafe(32))
        self._sessions[session.sid] = session
        return session

    def sign_in(self, old: Session, api_key: str, scopes: frozenset[str]) -> Session:
        """A new id and CSRF token at sign-in, so an id planted before it is worth nothing."""
        self.drop(old)
        session = self.new()
        session.api_key = api_key
        session.scopes = scopes
        return session

    def drop(self, session: Session) -> None:
        self._sessions.pop(session.sid, None)
