"""Sign-in sessions carried by the browser in one encrypted cookie: no state on the server.

Why a cookie and not a store: the console owns no database by design (contract §1: web pages
over the five services' public APIs), and a session kept in the process would end at every
restart and tie an operator to one replica (sticky sessions). So the whole session (the
operator's API key, its scopes, the CSRF token of the forms, a one-shot flash message and two
timestamps) travels in the `console_session` cookie, sealed with AES-256-GCM (authenticated
encryption: the browser can neither read the key nor change a byte without the cookie being
refused). Any replica holding the same secret opens it; nothing else can.

- **The secret** comes from `CONSOLE_SESSION_SECRET`, a comma-separated list: the first secret
  seals, every one opens, so a secret is rotated by putting the new one first and dropping the
  old one a session lifetime later (a cookie opened with an older secret is sealed again with
  the first one at its next request). Removing a secret ends every session it sealed. Without
  the variable each process makes up its own (`make run`): sessions then end at a restart and
  are not shared between replicas, which several replicas must not run with. Each secret is
  stretched with HKDF-SHA256 into separate keys for the cookie and for the sign-in form's token.
- **Expiry** is inside the sealed cookie, not in the browser's hands: `issued` (absolute
  lifetime, `CONSOLE_SESSION_MAX_HOURS`) and `seen` (idle lifetime,
  `CONSOLE_SESSION_IDLE_MINUTES`, stamped again at most once every `REFRESH_SECONDS`, so that
  not every response carries a new cookie). Times are the wall clock, shared by the replicas.
- **Sign-out** deletes the cookie. What cannot be done without state is revoking a copy of it:
  a cookie taken from a browser stays valid until its idle or absolute lifetime ends, which is
  why both are short (30 minutes and 12 hours by default). Rotating the secret away ends every
  session at once.
- **Size**: a cookie stays under `MAX_COOKIE_BYTES` (browsers keep at least 4096 bytes per
  cookie, RFC 6265 §6.1): API keys longer than `MAX_API_KEY_BYTES` do not sign in, and flash
  messages are dropped, oldest first, when they would not fit. Nothing is compressed: a
  compressed secret beside text an attacker can choose would leak through the cookie's length.

Only a sign-in creates a session, with a new id and CSRF token each time, so a cookie planted
before it is worth nothing. A visitor who has not signed in gets an anonymous `Session` and no
session cookie. What an anonymous page needs from a session is the CSRF token of its forms (the
sign-in and the language switch); it is double-submitted:

- the browser holds a random nonce in the `console_signin` cookie (HttpOnly, SameSite=Strict,
  ending with the browser session), and each form carries the nonce signed with a timestamp
  under the session secret (`signin_token`);
- a POST passes when the form's token verifies, is at most `SIGNIN_TOKEN_SECONDS` old and
  names the nonce of the cookie that came with it (`check_signin_token`).

Why this design: it is the simplest one that keeps the server free of per-visitor state and
still ties a token to the browser it was given to. A bare HMAC of a nonce in the form, not
bound to a cookie, would be a bearer token that an attacker fetches from /login and plants in
a cross-site form (login CSRF: signing the victim in with the attacker's key). Bound to the
cookie, a forged form needs the victim's nonce, which another site cannot read (HttpOnly) and
whose cookie the browser does not send with a cross-site POST (SameSite=Strict). The signature
and its timestamp let a token expire and refuse tokens no replica issued. What it does not
stand against is a site that can set this console's cookies (a sibling subdomain); a `__Host-`
cookie name would, but it requires Secure, which plain-HTTP `make run` lacks.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "console_session"
SIGNIN_COOKIE = "console_signin"
SIGNIN_TOKEN_SECONDS = 2 * 3600  # a sign-in page left open longer asks for a reload
MIN_SECRET_CHARS = 32
MAX_COOKIE_BYTES = 4000  # name=value; below the 4096 bytes every browser keeps
MAX_API_KEY_BYTES = 1024  # as it appears in the sealed JSON
REFRESH_SECONDS = 60  # the idle clock in the cookie is stamped again at most once a minute
_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_AAD = b"loyalty-console session v1"
_NONCE = re.compile(r"[A-Za-z0-9_-]{32,64}")


def parse_secrets(value: str) -> list[str]:
    """`CONSOLE_SESSION_SECRET`: comma-separated, the first seals, all open. Each at least
    `MIN_SECRET_CHARS` characters (`openssl rand -base64 32` gives 44)."""
    found = [part.strip() for part in value.split(",") if part.strip()]
    for secret in found:
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"CONSOLE_SESSION_SECRET: each secret needs at least {MIN_SECRET_CHARS} "
                f"characters (one is {len(secret)}); make one with `openssl rand -base64 32`"
            )
    return found


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
        secret.encode()
    )


@dataclass
class Session:
    sid: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    api_key: str | None = field(default=None, repr=False)  # never in a log line
    scopes: frozenset[str] = frozenset()
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    issued: float = 0.0  # wall-clock seconds: when the operator signed in
    seen: float = 0.0  # the last request, to REFRESH_SECONDS
    changed: bool = False  # the browser needs a new cookie

    @property
    def signed_in(self) -> bool:
        return self.api_key is not None

    @classmethod
    def anonymous(cls, csrf: str) -> Session:
        """A visitor who has not signed in: no session cookie, its token double-submitted."""
        return cls(sid="", csrf=csrf)

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    def can_any(self, *scopes: str) -> bool:
        return any(s in self.scopes for s in scopes)

    def say(self, kind: str, message: str) -> None:
        self.flash.append((kind, message))
        self.changed = True

    def take_flash(self) -> list[tuple[str, str]]:
        messages, self.flash = self.flash, []
        if messages:
            self.changed = True
        return messages


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Seals sessions into cookies and opens them again; holds no session itself."""

    def __init__(
        self,
        secrets_: Sequence[str],
        *,
        idle_seconds: float,
        max_age_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets_:
            raise ValueError("at least one session secret")
        self._ciphers = [AESGCM(_derive(s, b"loyalty-console session cookie")) for s in secrets_]
        # itsdangerous signs with the last key of the list and accepts all of them.
        signin_keys = [_derive(s, b"loyalty-console sign-in form") for s in secrets_]
        self._signin = URLSafeTimedSerializer(
            list(reversed(signin_keys)), salt="loyalty-console-signin-csrf"
        )
        self.idle_seconds = idle_seconds
        self.max_age_seconds = max_age_seconds
        self.clock = clock

    # --- the signed-in session's cookie ------------------------------------------------------

    @staticmethod
    def api_key_fits(api_key: str) -> bool:
        return len(json.dumps(api_key).encode()) <= MAX_API_KEY_BYTES

    def _seal(self, payload: dict[str, Any]) -> str:
        plain = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        nonce = os.urandom(_NONCE_BYTES)
        return _b64encode(_VERSION + nonce + self._ciphers[0].encrypt(nonce, plain, _AAD))

    def cookie_value(self, session: Session) -> str:
        """The sealed cookie; flash messages that would not fit are dropped, oldest first."""
        payload: dict[str, Any] = {
            "i": session.sid,
            "c": session.csrf,
            "k": session.api_key,
            "s": sorted(session.scopes),
            "t0": int(session.issued),
            "t": int(session.seen),
            "f": [list(m) for m in session.flash],
        }
        while True:
            value = self._seal(payload)
            if len(COOKIE) + 1 + len(value) <= MAX_COOKIE_BYTES:
                return value
            if not payload["f"]:
                raise ValueError("a session too large for a cookie")  # api_key_fits prevents it
            payload["f"] = payload["f"][1:]

    def _open(self, cookie: str) -> tuple[dict[str, Any], bool] | None:
        """The payload and whether an older secret sealed it; None for anything not sealed
        by one of the secrets."""
        if len(cookie) > MAX_COOKIE_BYTES:
            return None
        try:
            raw = _b64decode(cookie)
        except (binascii.Error, ValueError):
            return None
        if len(raw) < 1 + _NONCE_BYTES + _TAG_BYTES or raw[:1] != _VERSION:
            return None
        nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        for position, cipher in enumerate(self._ciphers):
            try:
                plain = cipher.decrypt(nonce, sealed, _AAD)
            except InvalidTag:
                continue
            try:
                payload = json.loads(plain)
            except ValueError:
                return None
            return (payload, position > 0) if isinstance(payload, dict) else None
        return None

    def load(self, cookie: str | None) -> Session | None:
        """The session the cookie carries, or None: not sealed by a secret of ours, or its
        idle or absolute lifetime is over."""
        if not cookie:
            return None
        opened = self._open(cookie)
        if opened is None:
            return None
        payload, older_secret = opened
        if not isinstance(payload.get("k"), str):
            return None
        try:
            session = Session(
                sid=str(payload["i"]),
                csrf=str(payload["c"]),
                api_key=str(payload["k"]),
                scopes=frozenset(str(s) for s in payload["s"]),
                flash=[(str(kind), str(text)) for kind, text in payload["f"]],
                issued=float(payload["t0"]),
                seen=float(payload["t"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        now = self.clock()
        if now - session.issued > self.max_age_seconds or now - session.seen > self.idle_seconds:
            return None
        if now - session.seen >= REFRESH_SECONDS:
            session.seen = now
            session.changed = True
        if older_secret:
            session.changed = True  # sealed again with the first secret
        return session

    def sign_in(self, api_key: str, scopes: frozenset[str]) -> Session:
        """The only way a session is created: a new id and CSRF token at each sign-in, so a
        cookie planted before it is worth nothing."""
        now = self.clock()
        return Session(
            sid=secrets.token_urlsafe(16),
            api_key=api_key,
            scopes=scopes,
            issued=now,
            seen=now,
            changed=True,
        )

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
