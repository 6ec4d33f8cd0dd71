"""Use cases on a member's preferences: consent per channel, quiet hours, time zone, locale."""

from __future__ import annotations

from datetime import time
from typing import Any

from loyalty_shared.errors import Conflict
from loyalty_shared.service import Runtime

from ..adapters.store import StoredPreferences, load_preferences, save_preferences
from ..domain.policy import CONSENT_CHANNELS, DEFAULT_LOCALE, DEFAULT_TIMEZONE
from .context import Notifier

_UNSET: Any = object()


def preferences_view(
    notifier: Notifier, member_id: str, row: StoredPreferences | None
) -> dict[str, Any]:
    row = row or StoredPreferences(member_id)
    domain = row.to_domain(notifier.default_quiet_hours)
    return {
        "member_id": member_id,
        "channels": {c: {"marketing": domain.consents_to(c)} for c in CONSENT_CHANNELS},
        "quiet_hours": domain.quiet_hours.as_dict() if domain.quiet_hours else None,
        "quiet_hours_source": row.quiet_mode,
        "timezone": row.timezone or DEFAULT_TIMEZONE,
        "locale": row.locale or DEFAULT_LOCALE,
        "erased": row.erased_at is not None,
    }


async def get_preferences(runtime: Runtime, notifier: Notifier, member_id: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        rows = await load_preferences(conn, [member_id])
    return preferences_view(notifier, member_id, rows.get(member_id))


async def update_preferences(
    runtime: Runtime,
    notifier: Notifier,
    member_id: str,
    *,
    consents: dict[str, bool] | None = None,
    quiet_hours: tuple[time, time] | None = _UNSET,
    timezone: str | None = None,
    locale: str | None = None,
) -> dict[str, Any]:
    """Change what was given; consents merge channel by channel; `quiet_hours=None` turns
    them off."""
    async with runtime.transaction() as conn:
        rows = await load_preferences(conn, [member_id], lock=True)
        row = rows.get(member_id) or StoredPreferences(member_id)
        if row.erased_at is not None:
            raise Conflict("member_erased", f"member '{member_id}' was erased")
        if consents:
            row.consents.update(consents)
        if quiet_hours is None:
            row.quiet_mode, row.quiet_start, row.quiet_end = "off", None, None
        elif quiet_hours is not _UNSET:
            row.quiet_mode = "custom"
            row.quiet_start, row.quiet_end = quiet_hours
        row.timezone = timezone or row.timezone
        row.locale = locale or row.locale
        await save_preferences(conn, [row], runtime.clock.now())
    return preferences_view(notifier, member_id, row)
