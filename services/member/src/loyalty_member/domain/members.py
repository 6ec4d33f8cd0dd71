"""Phone normalisation, card numbers and referral codes."""

from __future__ import annotations

import re
import secrets

import phonenumbers

DEFAULT_REGION = "CN"
_REFERRAL_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud at a till


_PHONE_CHARACTERS = re.compile(r"^[0-9 ()+.-]{4,32}$")


class InvalidPhone(ValueError):
    pass


def normalise_phone(raw: str, region: str = DEFAULT_REGION) -> str:
    """E.164 form of a phone number; an 11-digit mainland number gets +86."""
    cleaned = raw.strip()
    if not cleaned:
        raise InvalidPhone("phone is empty")
    if not _PHONE_CHARACTERS.match(cleaned):
        # phonenumbers would read digits out of "abc138..." or take "x12" as an extension;
        # a member's phone is digits with the usual separators and nothing else.
        raise InvalidPhone(f"'{raw}' is not a phone number: use digits, spaces, dashes, + ( )")
    try:
        parsed = phonenumbers.parse(cleaned, None if cleaned.startswith("+") else region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"'{raw}' is not a phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhone(f"'{raw}' is not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def luhn_check_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def new_card_no(prefix: str = "8") -> str:
    """A 16-digit card number: prefix, random digits, Luhn check digit."""
    body = prefix + "".join(secrets.choice("0123456789") for _ in range(15 - len(prefix)))
    return body + luhn_check_digit(body)


def card_no_is_valid(card_no: str) -> bool:
    return card_no.isdigit() and len(card_no) > 1 and luhn_check_digit(card_no[:-1]) == card_no[-1]


def new_referral_code() -> str:
    return "".join(secrets.choice(_REFERRAL_ALPHABET) for _ in range(8))
