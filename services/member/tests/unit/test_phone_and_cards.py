"""Member domain rules: phone normalisation to E.164, Luhn card numbers, referral codes."""

from __future__ import annotations

import pytest
from loyalty_member.domain.members import (
    InvalidPhone,
    card_no_is_valid,
    luhn_check_digit,
    new_card_no,
    new_referral_code,
    normalise_phone,
)

REFERRAL_ALPHABET = set("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # 11-digit mainland mobile numbers get +86
        ("13800138000", "+8613800138000"),
        ("  13800138000  ", "+8613800138000"),
        # spaces, dashes and brackets are accepted
        ("138 0013 8000", "+8613800138000"),
        ("138-0013-8000", "+8613800138000"),
        ("(+86) 138 0013 8000", "+8613800138000"),
        # a +86 (or 0086) prefix is accepted
        ("+8613800138000", "+8613800138000"),
        ("+86 138 0013 8000", "+8613800138000"),
        ("+86-138-0013-8000", "+8613800138000"),
        ("008613800138000", "+8613800138000"),
        # a mainland landline with its area code
        ("010 6552 9988", "+861065529988"),
        # numbers of other countries in E.164 are kept
        ("+16502530000", "+16502530000"),
        ("+1 650 253 0000", "+16502530000"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+4915123456789", "+4915123456789"),
        ("+852 6123 4567", "+85261234567"),
    ],
)
def test_normalise_phone_to_e164(raw, expected):
    assert normalise_phone(raw) == expected


def test_the_same_phone_written_differently_normalises_to_one_number():
    written = ["13800138000", "138 0013 8000", "138-0013-8000", "+86 138 0013 8000"]
    assert {normalise_phone(p) for p in written} == {"+8613800138000"}


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "abc",
        "not a phone",
        "+",
        "+86",
        "123",  # too short
        "1380013800",  # 10 digits
        "138001380001",  # 12 digits
        "12345678901",  # 11 digits but no mainland mobile prefix
        "13800138000abc",
        "+999 1234567",  # no such country code
        "+86 12",
    ],
)
def test_garbage_short_or_empty_phones_are_invalid(raw):
    with pytest.raises(InvalidPhone):
        normalise_phone(raw)


def test_invalid_phone_is_a_value_error():
    assert issubclass(InvalidPhone, ValueError)


def test_luhn_check_digit_of_known_numbers():
    # 79927398713 is the textbook Luhn example; 4539 1488 0343 6467 a valid test card number
    assert luhn_check_digit("7992739871") == "3"
    assert luhn_check_digit("453914880343646") == "7"
    assert card_no_is_valid("79927398713")
    assert card_no_is_valid("4539148803436467")


def test_card_numbers_are_16_digits_with_a_valid_luhn_digit():
    cards = {new_card_no() for _ in range(200)}
    assert len(cards) == 200  # random enough not to repeat
    for card in cards:
        assert len(card) == 16
        assert card.isdigit()
        assert card.startswith("8")
        assert luhn_check_digit(card[:-1]) == card[-1]
        assert card_no_is_valid(card)


def test_card_number_prefix_is_kept():
    card = new_card_no(prefix="62")
    assert len(card) == 16
    assert card.startswith("62")
    assert card_no_is_valid(card)


def test_card_no_is_valid_rejects_any_changed_digit():
    for _ in range(20):
        card = new_card_no()
        for position in range(16):
            for digit in "0123456789":
                if digit == card[position]:
                    continue
                changed = card[:position] + digit + card[position + 1 :]
                assert not card_no_is_valid(changed), (card, changed)


@pytest.mark.parametrize("bad", ["", "8", "abcd", "8000 0000 0000 0000", "800000000000000x"])
def test_card_no_is_valid_rejects_non_numbers(bad):
    assert not card_no_is_valid(bad)


def test_referral_codes_are_8_chars_from_the_unambiguous_alphabet():
    codes = [new_referral_code() for _ in range(500)]
    for code in codes:
        assert len(code) == 8
        assert set(code) <= REFERRAL_ALPHABET
        assert not set(code) & set("01OI")
    assert len(set(codes)) == len(codes)
    # over many codes every letter of the alphabet shows up, and nothing else
    assert set("".join(codes)) == REFERRAL_ALPHABET
