"""Member 360: look a member up, see everything about them on one page, act on them."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from ..neighbours import ApiError, gather_sections
from ..web import ActionDep, Console, FormError, PageDep, integer, required, text

router = APIRouter()

ERASE_WORD = "ERASE"


def lookup_kind(query: str) -> tuple[str, str]:
    """What was typed at the desk: an email, a 16-digit card number, or a phone number."""
    compact = re.sub(r"[\s\-]", "", query)
    if "@" in query:
        return "email", query
    if re.fullmatch(r"\d{16}", compact):
        return "card_no", compact
    return "phone", query


async def find_members(console: Console, query: str, kind: str = "auto") -> list[dict[str, Any]]:
    if kind not in ("phone", "card_no", "email"):
        kind, query = lookup_kind(query)
    page = await console.api.get("member", "/v1/members", **{kind: query})
    return list(page.get("items", []))


@router.get("/members", include_in_schema=False)
async def lookup(console: PageDep, q: str = "", kind: str = "auto") -> Response:
    console.require("members:read")
    q = q.strip()
    results: list[dict[str, Any]] = []
    error = None
    if q:
        try:
            results = await find_members(console, q, kind)
        except ApiError as exc:
            if exc.status >= 500 or exc.status in (401, 403):
                raise
            error = exc.detail
        if len(results) == 1 and not error:
            return console.redirect(f"/members/{quote(results[0]['member_id'])}")
    status = 422 if error else 200
    return console.render(
        "members/lookup.html",
        status,
        q=q,
        kind=kind,
        results=results,
        error=error,
        searched=bool(q),
    )


async def member_page(
    console: Console,
    member_id: str,
    *,
    status: int = 200,
    action: str | None = None,
    error: str | None = None,
    field_errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> HTMLResponse:
    api = console.api
    member = await api.get("member", f"/v1/members/{quote(member_id)}")
    ledger_cursor = console.request.query_params.get("ledger_cursor")
    mid = quote(member_id)
    calls: dict[str, Any] = {
        "tier": api.get("member", f"/v1/members/{mid}/tier"),
        "checkins": api.get("member", f"/v1/members/{mid}/check-ins", limit=7),
        "cards": api.get("member", f"/v1/members/{mid}/cards"),
        "orders": api.get("member", f"/v1/members/{mid}/orders", limit=10),
        "surveys": api.get("member", f"/v1/members/{mid}/surveys", limit=10),
        "complaints": api.get("member", "/v1/complaints", member_id=member_id, limit=20),
        "account": api.get("points", f"/v1/accounts/{mid}"),
        "ledger": api.get("points", f"/v1/accounts/{mid}/ledger", limit=50, cursor=ledger_cursor),
        "stored_value": api.get("points", f"/v1/stored-value/{mid}"),
        "coupons": api.get("coupon", f"/v1/members/{mid}/coupons", limit=50),
        "deliveries": api.get("notifier", "/v1/deliveries", member_id=member_id, limit=20),
        "inbox": api.get("notifier", f"/v1/members/{mid}/inbox", limit=10),
        "profile": api.get("segmenter", f"/v1/profiles/{mid}"),
    }
    if console.session.can("coupons:write"):
        calls["campaigns"] = api.get("coupon", "/v1/campaigns", limit=200)
    sections = await gather_sections(**calls)
    campaigns = []
    if "campaigns" in sections and sections["campaigns"].ok:
        campaigns = [c for c in sections["campaigns"].data["items"] if c.get("status") == "active"]
    return console.render(
        "members/member.html",
        status,
        member=member,
        s=sections,
        campaigns=campaigns,
        action=action,
        error=error,
        errors=field_errors or {},
        values=values or {},
        erase_word=ERASE_WORD,
    )


@router.get("/members/{member_id}", include_in_schema=False)
async def member_360(console: PageDep, member_id: str) -> Response:
    console.require("members:read")
    return await member_page(console, member_id)


async def _act(
    console: Console,
    member_id: str,
    action: str,
    run: Any,
) -> Response:
    """Run an action; success → back to the page with a message, refusal → the form again."""
    form = await console.request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str) and k not in ("csrf",)}
    try:
        message = await run(form)
    except FormError as exc:
        return await member_page(
            console,
            member_id,
            status=422,
            action=action,
            field_errors={exc.field: exc.message},
            values=values,
        )
    except ApiError as exc:
        if exc.status in (401,) or (exc.status >= 500 and exc.code != "service_unavailable"):
            raise
        status = exc.status if 400 <= exc.status < 500 else 503
        return await member_page(
            console,
            member_id,
            status=status,
            action=action,
            error=exc.detail,
            field_errors=exc.field_errors(),
            values=values,
        )
    console.session.say("ok", message)
    return console.redirect(f"/members/{quote(member_id)}#{action}")


@router.post("/members/{member_id}/adjust", include_in_schema=False)
async def adjust_points(console: ActionDep, member_id: str) -> Response:
    console.require("points:write")
    _ = console._

    async def run(form: Any) -> str:
        points = integer(
            form, "points", _("Enter a whole number of points, not 0."), allow_negative=True
        )
        reason = required(form, "reason", _("A reason is required."))
        reply = await console.api.post(
            "points",
            f"/v1/accounts/{quote(member_id)}/adjustments",
            {"points": points, "reason": reason},
            idempotency_key=text(form, "idem") or None,
        )
        return _(
            "Points adjusted by %(points)s; available now %(after)s.",
            points=f"{points:+d}",
            after=reply.body.get("available_after"),
        )

    return await _act(console, member_id, "adjust", run)


@router.post("/members/{member_id}/issue-coupon", include_in_schema=False)
async def issue_coupon(console: ActionDep, member_id: str) -> Response:
    console.require("coupons:write")
    _ = console._

    async def run(form: Any) -> str:
        code = required(form, "campaign_code", _("Choose a campaign."))
        reply = await console.api.post(
            "coupon",
            f"/v1/campaigns/{quote(code)}/issue",
            {"member_ids": [member_id]},
            idempotency_key=text(form, "idem") or None,
        )
        job_id = reply.body.get("job_id", "")
        job = reply.body
        for _attempt in range(20):  # one member: the job ends in moments
            job = await console.api.get("coupon", f"/v1/jobs/{quote(job_id)}")
            if job.get("status") in ("completed", "failed"):
                break
            await asyncio.sleep(0.1)
        if job.get("coupons_issued"):
            return _("Coupon issued from campaign %(code)s.", code=code)
        if job.get("holdout"):
            return _("The member is in the holdout group of %(code)s: no coupon.", code=code)
        if job.get("status") != "completed":
            return _("Issue of %(code)s started (job %(job)s).", code=code, job=job_id)
        return _("Nothing issued from %(code)s (already received, limit or stock).", code=code)

    return await _act(console, member_id, "issue", run)


@router.post("/members/{member_id}/bind-card", include_in_schema=False)
async def bind_card(console: ActionDep, member_id: str) -> Response:
    console.require("members:write")
    _ = console._

    async def run(form: Any) -> str:
        card_no = required(form, "card_no", _("Enter the card number."))
        await console.api.post(
            "member",
            f"/v1/members/{quote(member_id)}/cards:bind",
            {"card_no": card_no},
            idempotency_key=text(form, "idem") or None,
        )
        return _("Card %(card)s bound.", card=card_no)

    return await _act(console, member_id, "bind", run)


@router.post("/members/{member_id}/erase", include_in_schema=False)
async def erase(console: ActionDep, member_id: str) -> Response:
    console.require("members:write")
    _ = console._

    async def run(form: Any) -> str:
        if text(form, "confirm") != ERASE_WORD:
            raise FormError("confirm", _("Type %(word)s to confirm.", word=ERASE_WORD))
        await console.api.call("member", "DELETE", f"/v1/members/{quote(member_id)}")
        return _("The member's personal data is erased; the ledgers stay under the member id.")

    return await _act(console, member_id, "erase", run)
