"""Discounts, validation reasons and template rules: the domain alone, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from loyalty_coupon.domain.templates import (
    CODE_ALPHABET,
    Cart,
    CartLine,
    CouponState,
    CouponTemplate,
    judge,
    new_coupon_code,
    template_problems,
)

NOW = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)


def tpl(**kw) -> CouponTemplate:
    base = {"code": "T", "name": "t", "kind": "amount_off", "value": 2000, "valid_days": 30}
    return CouponTemplate(**{**base, **kw})


def coupon(**kw) -> CouponState:
    base = {
        "coupon_code": "CPN-AAAA-BBBB",
        "member_id": "m1",
        "status": "issued",
        "valid_from": NOW - timedelta(days=1),
        "valid_until": NOW + timedelta(days=1),
    }
    return CouponState(**{**base, **kw})


def verdict(template: CouponTemplate, cart: Cart, **coupon_kw):
    return judge(coupon(**coupon_kw), template, member_id="m1", cart=cart, now=NOW)


@pytest.mark.parametrize(
    ("template", "total", "discount"),
    [
        (tpl(value=2000), 10000, 2000),
        (tpl(value=2000), 1500, 1500),  # never more than the cart
        (tpl(kind="percent_off", value=15), 9999, 1499),  # rounds down, for the merchant
        (tpl(kind="percent_off", value=50, max_discount_minor=3000), 10000, 3000),
        (tpl(kind="percent_off", value=100), 4321, 4321),
        (tpl(kind="free_shipping", value=0), 5000, 0),
        (tpl(kind="gift", value=0, gift_sku="MUG"), 5000, 0),
    ],
)
def test_discounts(template, total, discount):
    result = verdict(template, Cart(total))
    assert result.valid and result.discount_minor == discount


def test_minimum_spend_counts_the_eligible_lines_only():
    snacks = tpl(kind="percent_off", value=10, categories=("snacks",), min_spend_minor=3000)
    lines = (
        CartLine("S1", "snacks", 2, 1000),
        CartLine("B1", "beverages", 5, 1000),
    )
    below = verdict(snacks, Cart(7000, lines))
    assert not below.valid and below.reason == "below_min_spend"
    more = (*lines, CartLine("S2", "snacks", 1, 1500))
    ok = verdict(snacks, Cart(8500, more))
    assert ok.valid and ok.discount_minor == 350  # 10 % of the 3500 of snacks
    wrong = verdict(snacks, Cart(5000, (CartLine("B1", "beverages", 5, 1000),)))
    assert wrong.reason == "wrong_category"
    assert verdict(snacks, Cart(5000)).reason == "wrong_category"  # no lines: cannot tell


def test_reasons_in_the_order_a_cashier_needs_them():
    t = tpl(min_spend_minor=10**6)
    assert judge(None, None, member_id="m1", cart=Cart(1), now=NOW).reason == "not_found"
    assert judge(coupon(), t, member_id="m2", cart=Cart(1), now=NOW).reason == "not_owned"
    assert verdict(t, Cart(1), status="redeemed").reason == "already_redeemed"
    assert verdict(t, Cart(1), status="expired").reason == "expired"
    assert verdict(t, Cart(1), valid_until=NOW).reason == "expired"  # the end is exclusive
    assert verdict(t, Cart(1), valid_from=NOW + timedelta(seconds=1)).reason == "not_yet_valid"
    assert verdict(t, Cart(1)).reason == "below_min_spend"


def _fields(t: CouponTemplate) -> set[str]:
    return {p.field for p in template_problems(t)}


def test_template_rules_name_the_field():
    assert _fields(tpl()) == set()
    assert _fields(tpl(value=-1)) == {"value"}
    assert _fields(tpl(kind="percent_off", value=101)) == {"value"}
    assert _fields(tpl(kind="percent_off", value=0)) == {"value"}
    assert _fields(tpl(min_spend_minor=-5)) == {"min_spend_minor"}
    assert _fields(tpl(max_discount_minor=100)) == {"max_discount_minor"}  # amount_off: no cap
    assert _fields(tpl(kind="gift", value=0)) == {"gift_sku"}
    assert _fields(tpl(valid_days=None)) == {"ends_at"}
    assert _fields(tpl(valid_days=None, starts_at=NOW, ends_at=NOW)) == {"ends_at"}
    assert _fields(tpl(valid_days=0)) == {"valid_days"}
    assert _fields(tpl(valid_days=5, ends_at=NOW)) == {"valid_days"}
    assert _fields(tpl(per_member_limit=0, stock=-1)) == {"per_member_limit", "stock"}


def test_validity_by_days_or_window():
    assert tpl(valid_days=7).validity(NOW) == (NOW, NOW + timedelta(days=7))
    start, end = NOW + timedelta(days=2), NOW + timedelta(days=9)
    window = tpl(valid_days=None, starts_at=start, ends_at=end)
    assert window.validity(NOW) == (start, end)
    assert tpl(valid_days=None, ends_at=end).validity(NOW) == (NOW, end)
    assert not window.can_still_be_used(end)


def test_codes_are_readable_and_distinct():
    codes = {new_coupon_code() for _ in range(2000)}
    assert len(codes) == 2000
    for code in list(codes)[:50]:
        assert code.startswith("CPN-") and len(code) == 13
        assert all(c in CODE_ALPHABET for c in code[4:].replace("-", ""))
    assert not set("01OIL") & set(CODE_ALPHABET)
