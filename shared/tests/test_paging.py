"""The one cursor codec of every list (contract §3): a cursor reads back as the position it was
made from, and anything the codec did not make is a 422 `validation_error` at the cursor."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loyalty_shared.errors import ProblemError
from loyalty_shared.paging import cursor_after, decode_cursor, encode_cursor

part = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]))


@given(st.lists(part, min_size=1, max_size=3))
def test_a_cursor_reads_back_as_its_parts(parts):
    cursor = encode_cursor(*parts)
    assert cursor.isascii() and "=" not in cursor
    assert decode_cursor(cursor, len(parts)) == tuple(parts)


def refused(cursor: str, parts: int = 2) -> dict:
    with pytest.raises(ProblemError) as caught:
        decode_cursor(cursor, parts)
    problem = caught.value
    assert (problem.status, problem.code) == (422, "validation_error")
    (error,) = problem.extra["errors"]
    assert error["loc"] == ["query", "cursor"] and error["msg"]
    return error


def test_garbage_and_edited_cursors_are_refused():
    good = encode_cursor("2026-12-07T00:00:00+00:00", "C-1")
    for garbage in ("", "zzz", "%%%", "not/a cursor", "日本", "\x87t\x12ø", "a" * 2000):
        refused(garbage)
    refused(good, parts=1)  # another number of parts
    refused(good, parts=3)
    for i in range(len(good)):  # any one character changed
        edited = good[:i] + ("A" if good[i] != "A" else "B") + good[i + 1 :]
        refused(edited)
    refused(good[:-1])
    refused(good + "A")
    refused(good + "==")
    # a well-formed payload without the codec's checksum
    plain = base64.urlsafe_b64encode(b'["2026-12-07T00:00:00+00:00","C-1"]').decode()
    refused(plain)
    # an older service's cursor: a bare id, a date, a number
    for old in ("01JF3Z5V3B0000000000000000", "2026-12-14", "12"):
        refused(old, parts=1)


@given(st.text(max_size=80))
def test_a_random_string_is_refused(text):
    with pytest.raises(ProblemError):
        decode_cursor(text, 1)


def test_no_cursor_is_the_first_page():
    assert cursor_after(None, 1) is None
    assert cursor_after("", 1) is None
    assert cursor_after(encode_cursor("x"), 1) == ("x",)
    with pytest.raises(ProblemError):
        cursor_after("x", 1)
