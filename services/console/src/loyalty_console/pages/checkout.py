"""The checkout desk: find the member, check and use coupons, spend points, top up money.

Every form carries an Idempotency-Key made when the form was rendered: a double click, a
resubmitted page or a retry after a timeout reaches the service as the same request, which
answers the first result again and does nothing twice.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from ..neighbours import ApiError, gather_sections
from ..web import ActionDep, Console, FormError, PageDep, integer, money_minor, required, text
from .members import find_members

router = APIRouter()
DESK_SCOPES = ("events:write", "points:write")


@router.get("/checkout", include_in_schema=False)
async def desk_lookup(console: PageDep, q: str = "") -> Response:
    console.require(*DESK_SCOPES)
    q = q.strip()
    results: list[dict[str, Any]] = []
    error = None
    if q:
        if not console.session.can("members:read"):
            error = console._("Looking a member up needs the scope members:read.")
        else:
            try:
                results = await find_members(console, q)
            except ApiError as exc:
                if exc.status >= 500 or exc.status in (401, 403):
                    raise
                error = exc.detail
        if len(results) == 1:
            return console.redirect(f"/checkout/{quote(results[0]['member_id'])}")
    return console.render(
        "checkout/lookup.html", 422 if error else 200, q=q, results=results, error=error
    )


async def desk_page(
    console: Console,
    member_id: str,
    *,
    status: int = 200,
    action: str | None = None,
    error: str | None = None,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    result: dict[str, Any] | None = None,
) -> HTMLResponse:
    api = console.api
    mid = quote(member_id)
    calls: dict[str, Any] = {
        "account": api.get("points", f"/v1/accounts/{mid}"),
        "stored_value": api.get("points", f"/v1/stored-value/{mid}"),
        "coupons": api.get("coupon", f"/v1/members/{mid}/coupons", status="issued", limit=50),
    }
    if console.session.can("members:read"):
        calls["member"] = api.get("member", f"/v1/members/{mid}")
    sections = await gather_sections(**calls)
    member = sections.get("member")
    if member is not None and member.error is not None and member.error.status == 404:
        raise member.error
    return console.render(
        "checkout/desk.html",
        status,
        member_id=member_id,
        s=sections,
        action=action,
        error=error,
        errors=errors or {},
        values=values or {},
        result=result,
    )


@router.get("/checkout/{member_id}", include_in_schema=False)
async def desk(console: PageDep, member_id: str) -> Response:
    console.require(*DESK_SCOPES)
    return await desk_page(console, member_id)


async def _desk_action(console: Console, member_id: str, action: str, run: Any) -> Response:
    form = await console.request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf"}
    try:
        result = await run(form)
    except FormError as exc:
        return await desk_page(
            console,
            member_id,
            status=422,
            action=action,
            errors={exc.field: exc.message},
            values=values,
        )
    except ApiError as exc:
        if exc.status == 401 or (exc.status >= 500 and exc.code != "service_unavailable"):
            raise
        return await desk_page(
            console,
            member_id,
            status=exc.status if exc.status < 500 else 503,
            action=action,
            error=exc.detail,
            errors=exc.field_errors(),
            values=values,
        )
    result["action"] = action
    return await desk_page(console, member_id, action=action, result=result)


def _codes(raw: str) -> list[str]:
    return [c for c in re.split(r"[\s,;\uff0c]+", raw.strip().upper()) if c]


@router.post("/checkout/{member_id}/validate", include_in_schema=False)
async def validate_coupons(console: ActionDep, member_id: str) -> Response:
    console.require("events:write")
    _ = console._

    async def run(form: Any) -> dict[str, Any]:
        codes = _codes(text(form, "coupon_codes"))
        if not codes:
            raise FormError("coupon_codes", _("Enter at least one coupon code."))
        total = money_minor(form, "total", _("Enter the order total in yuan, e.g. 128.50."))
        reply = await console.api.post(
            "coupon",
            "/v1/validations",
            {"member_id": member_id, "total_minor": total, "coupon_codes": codes},
        )
        return {"validations": reply.body.get("items", []), "total_minor": total}

    return await _desk_action(console, member_id, "validate", run)


@router.post("/checkout/{member_id}/redeem-coupon", include_in_schema=False)
async def redeem_coupon(console: ActionDep, member_id: str) -> Response:
    console.require("events:write")
    _ = console._

    async def run(form: Any) -> dict[str, Any]:
        code = required(form, "coupon_code", _("Enter the coupon code.")).upper()
        order_id = required(form, "order_id", _("Enter the order number from the till."))
        body: dict[str, Any] = {"coupon_code": code, "member_id": member_id, "order_id": order_id}
        if text(form, "total"):
            body["total_minor"] = money_minor(form, "total", _("Enter the order total in yuan."))
        reply = await console.api.post(
            "coupon", "/v1/redemptions", body, idempotency_key=text(form, "idem") or None
        )
        return {"redemption": reply.body, "replayed": reply.replayed}

    return await _desk_action(console, member_id, "redeem_coupon", run)


@router.post("/checkout/{member_id}/redeem-points", include_in_schema=False)
async def redeem_points(console: ActionDep, member_id: str) -> Response:
    console.require(*DESK_SCOPES)
    _ = console._

    async def run(form: Any) -> dict[str, Any]:
        points = integer(form, "points", _("Enter a positive whole number of points."))
        order_id = required(form, "order_id", _("Enter the order number from the till."))
        reason = text(form, "reason") or _("checkout %(order)s", order=order_id)
        reply = await console.api.post(
            "points",
            "/v1/redemptions",
            {"member_id": member_id, "points": points, "reason": reason, "order_id": order_id},
            idempotency_key=text(form, "idem") or None,
        )
        return {"points_redemption": reply.body, "replayed": reply.replayed}

    return await _desk_action(console, member_id, "redeem_points", run)


@router.post("/checkout/{member_id}/top-up", include_in_schema=False)
async def top_up(console: ActionDep, member_id: str) -> Response:
    console.require("points:write")
    _ = console._

    async def run(form: Any) -> dict[str, Any]:
        amount = money_minor(form, "amount", _("Enter the amount in yuan, e.g. 100."))
        idem = text(form, "idem")
        if not idem:
            raise FormError("amount", _("The form has no request key: reload the page."))
        # The form's key is also the top-up's external id: the service's own once-only check.
        reply = await console.api.post(
            "points",
            f"/v1/stored-value/{quote(member_id)}/top-ups",
            {"external_id": idem, "amount_minor": amount, "currency": "CNY"},
            idempotency_key=idem,
        )
        return {"top_up": reply.body, "replayed": reply.replayed or reply.status == 200}

    return await _desk_action(console, member_id, "top_up", run)
