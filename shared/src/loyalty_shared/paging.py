"""The one cursor of every list (contract §3): `?limit=&cursor=` → `{items, next_cursor}`.

A cursor is opaque to clients. Inside it is the position the list stopped at (a few strings,
whatever the list orders by), a short checksum over them, all in URL-safe base64. A service
reads back only what it handed out: anything else (bad base64, another shape, another number of
parts, an edited or random string) is a 422 `validation_error` at `["query", "cursor"]`, never
"from the start". The checksum is no secret: it tells garbage from a cursor, it does not stop a
client that wants to forge one (a forged cursor is only a position in a list it may read).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Annotated

from fastapi import Query

from .errors import ProblemError

CURSOR_MAX_LENGTH = 1024
_DOMAIN = b"loyalty-cursor-v1\x00"
_CHECKSUM_BYTES = 4
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")

Cursor = Annotated[
    str | None,
    Query(
        max_length=CURSOR_MAX_LENGTH,
        description="`next_cursor` of the previous page; a cursor this list did not hand out "
        "is refused (422 `validation_error`)",
        # the alphabet `decode_cursor` checks first (with its own message); empty: page one
        json_schema_extra={"pattern": "^[A-Za-z0-9_-]*$"},
    ),
]


def invalid_cursor(msg: str = "not a cursor this list handed out") -> ProblemError:
    return ProblemError(
        422,
        "validation_error",
        f"cursor: {msg}",
        errors=[{"loc": ["query", "cursor"], "msg": msg, "type": "value_error"}],
    )


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(_DOMAIN + payload, digest_size=_CHECKSUM_BYTES).digest()


def encode_cursor(*parts: str) -> str:
    """The cursor of a position: one or more strings, given back by `decode_cursor`."""
    if not parts or not all(isinstance(p, str) for p in parts):
        raise TypeError("a cursor is one or more strings")
    payload = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_checksum(payload) + payload).decode().rstrip("=")


def decode_cursor(cursor: str, parts: int) -> tuple[str, ...]:
    """The `parts` strings of a cursor `encode_cursor` made; any other string raises the
    422 `validation_error` problem of `["query", "cursor"]`."""
    if not cursor or len(cursor) > CURSOR_MAX_LENGTH or not _ALPHABET.fullmatch(cursor):
        raise invalid_cursor()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise invalid_cursor() from None
    checksum, payload = raw[:_CHECKSUM_BYTES], raw[_CHECKSUM_BYTES:]
    if len(checksum) < _CHECKSUM_BYTES or not hmac.compare_digest(checksum, _checksum(payload)):
        raise invalid_cursor()
    try:
        decoded = json.loads(payload.decode())
    except (UnicodeDecodeError, ValueError):
        raise invalid_cursor() from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != parts
        or not all(isinstance(p, str) and "\x00" not in p for p in decoded)
    ):
        raise invalid_cursor()
    values = tuple(decoded)
    if encode_cursor(*values) != cursor:  # one spelling per position: no edited padding bits
        raise invalid_cursor()
    return values


def cursor_after(cursor: str | None, parts: int) -> tuple[str, ...] | None:
    """The position a list request continues after: None without a cursor (`?cursor=` empty
    or absent: the first page), else `decode_cursor`."""
    if not cursor:
        return None
    return decode_cursor(cursor, parts)


__all__ = [
    "CURSOR_MAX_LENGTH",
    "Cursor",
    "cursor_after",
    "decode_cursor",
    "encode_cursor",
    "invalid_cursor",
]
