"""The dashboard: the measures of the domain notes as charts, each with the figures behind it."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from .. import charts
from ..i18n import TIMEZONE
from ..neighbours import gather_sections
from ..web import PageDep

router = APIRouter()

STAGES = ["prospect", "new", "active", "cooling", "easy_winback", "hard_winback", "lost"]


def _day(raw: str, default: date) -> date:
    try:
        return date.fromisoformat(raw) if raw else default
    except ValueError:
        return default


def _month(d: date, back: int) -> str:
    year, month = d.year, d.month - back
    while month <= 0:
        month += 12
        year -= 1
    return f"{year:04d}-{month:02d}"


@router.get("/dashboard", include_in_schema=False)
async def dashboard(console: PageDep, start: str = "", end: str = "") -> Response:
    console.require("members:read")
    _ = console._
    today = datetime.now(TIMEZONE).date()
    end_day = _day(end, today)
    start_day = _day(start, end_day - timedelta(days=30))
    if start_day >= end_day:
        start_day = end_day - timedelta(days=30)
    # The period is whole local days: [start 00:00, end + 1 day 00:00) in Asia/Shanghai.
    period = {
        "start": datetime.combine(start_day, time(), TIMEZONE).isoformat(),
        "end": datetime.combine(end_day + timedelta(days=1), time(), TIMEZONE).isoformat(),
    }
    api = console.api
    s = await gather_sections(
        retention=api.get("segmenter", "/v1/analytics/retention", **period),
        bucket=api.get(
            "segmenter",
            "/v1/analytics/leaky-bucket",
            start_month=_month(end_day, 11),
            end_month=_month(end_day, 0),
        ),
        repeat=api.get("segmenter", "/v1/analytics/repeat-purchase", **period),
        guests=api.get("segmenter", "/v1/analytics/members-vs-guests", **period),
        lifecycle=api.get("segmenter", "/v1/analytics/lifecycle"),
        liability=api.get("segmenter", "/v1/analytics/points-liability", **period),
        ledger_liability=api.get("points", "/v1/reports/liability"),
    )
    svg: dict[str, Any] = {}
    if s["retention"].ok:
        r = s["retention"].data
        svg["retention"] = charts.bars(
            _("Customers: start, new, end"),
            [_("S (start)"), _("N (new)"), _("E (end)")],
            [(_("Customers"), [r.get("S"), r.get("N"), r.get("E")])],
        )
    if s["bucket"].ok:
        items = s["bucket"].data.get("items", [])
        svg["bucket"] = charts.bars(
            _("Gained versus lost per month"),
            [i["month"] for i in items],
            [
                (_("Gained"), [i.get("gained", 0) for i in items]),
                (_("Lost"), [-(i.get("lost") or 0) for i in items]),
                (_("Net change"), [i.get("net_change", 0) for i in items]),
            ],
        )
    if s["repeat"].ok:
        rp = s["repeat"].data
        once = (rp.get("buyers") or 0) - (rp.get("repeat_buyers") or 0)
        svg["repeat"] = charts.pie(
            _("Buyers in the period"),
            [(_("Bought twice or more"), rp.get("repeat_buyers") or 0), (_("Bought once"), once)],
        )
    if s["guests"].ok:
        g = s["guests"].data
        members, guests = g.get("members") or {}, g.get("guests") or {}
        svg["guests"] = charts.bars(
            _("Spend per order (yuan)"),
            [_("Members"), _("Guests")],
            [
                (
                    _("Spend per order"),
                    [
                        (members.get("spend_per_order_minor") or 0) / 100,
                        (guests.get("spend_per_order_minor") or 0) / 100,
                    ],
                )
            ],
        )
    if s["lifecycle"].ok:
        stages = s["lifecycle"].data.get("lifecycle_stages", {})
        order = STAGES + [k for k in stages if k not in STAGES]
        svg["lifecycle"] = charts.pie(
            _("Members per lifecycle stage"),
            [(k, stages[k]) for k in order if stages.get(k)],
        )
    if s["liability"].ok:
        out = s["liability"].data.get("outstanding", {})
        svg["liability"] = charts.bars(
            _("Outstanding points"),
            [_("Available"), _("Pending")],
            [(_("Points"), [out.get("available", 0), out.get("pending", 0)])],
        )
    return console.render(
        "dashboard.html", s=s, svg=svg, start=start_day.isoformat(), end=end_day.isoformat()
    )
