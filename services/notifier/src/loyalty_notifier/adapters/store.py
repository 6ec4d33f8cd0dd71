"""Reads and writes of the notifier's tables, set-based: one statement per table per batch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, time
from typing import Any

import orjson
from loyalty_shared.db import insert_many
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.policy import DEFAULT_LOCALE, DEFAULT_TIMEZONE, Preferences, QuietHours
from .tables import deliveries


@dataclass
class StoredPreferences:
    """A member's row in `preferences`; quiet hours are the service default unless the member
    chose their own (`custom`) or none (`off`)."""

    member_id: str
    consents: dict[str, bool] = field(default_factory=dict)
    quiet_mode: str = "default"
    quiet_start: time | None = None
    quiet_end: time | None = None
    timezone: str | None = None
    locale: str | None = None
    erased_at: datetime | None = None

    def to_domain(
        self,
        default_quiet: QuietHours,
        *,
        timezone: str | None = None,
        locale: str | None = None,
    ) -> Preferences:
        quiet: QuietHours | None = default_quiet
        if self.quiet_mode == "off":
            quiet = None
        elif self.quiet_mode == "custom" and self.quiet_start and self.quiet_end:
            quiet = QuietHours(self.quiet_start, self.quiet_end)
        return Preferences(
            member_id=self.member_id,
            consents=dict(self.consents),
            quiet_hours=quiet,
            timezone=self.timezone or timezone or DEFAULT_TIMEZONE,
            locale=self.locale or locale or DEFAULT_LOCALE,
            erased=self.erased_at is not None,
        )

    def copy(self) -> StoredPreferences:
        return replace(self, consents=dict(self.consents))


_PREF_COLUMNS = (
    "member_id, consents, quiet_mode, quiet_start, quiet_end, timezone, locale, erased_at"
)


async def load_preferences(
    conn: AsyncConnection, member_ids: Iterable[str], *, lock: bool = False
) -> dict[str, StoredPreferences]:
    ids = sorted(set(member_ids))
    if not ids:
        return {}
    sql = f"SELECT {_PREF_COLUMNS} FROM preferences WHERE member_id = ANY(CAST(:ids AS text[]))"
    if lock:
        sql += " ORDER BY member_id FOR UPDATE"
    rows = await conn.execute(text(sql), {"ids": ids})
    return {
        r.member_id: StoredPreferences(
            member_id=r.member_id,
            consents=dict(r.consents or {}),
            quiet_mode=r.quiet_mode,
            quiet_start=r.quiet_start,
            quiet_end=r.quiet_end,
            timezone=r.timezone,
            locale=r.locale,
            erased_at=r.erased_at,
        )
        for r in rows
    }


async def save_preferences(
    conn: AsyncConnection, rows: Iterable[StoredPreferences], now: datetime
) -> None:
    batch = sorted(rows, key=lambda p: p.member_id)
    if not batch:
        return
    await conn.execute(
        text(
            "INSERT INTO preferences (member_id, consents, quiet_mode, quiet_start, quiet_end, "
            "timezone, locale, erased_at, updated_at) "
            "SELECT u.*, CAST(:now AS timestamptz) FROM unnest(CAST(:ids AS text[]), "
            "CAST(:consents AS jsonb[]), CAST(:modes AS text[]), CAST(:starts AS time[]), "
            "CAST(:ends AS time[]), CAST(:zones AS text[]), CAST(:locales AS text[]), "
            "CAST(:erased AS timestamptz[])) AS u "
            "ON CONFLICT (member_id) DO UPDATE SET consents = EXCLUDED.consents, "
            "quiet_mode = EXCLUDED.quiet_mode, quiet_start = EXCLUDED.quiet_start, "
            "quiet_end = EXCLUDED.quiet_end, timezone = EXCLUDED.timezone, "
            "locale = EXCLUDED.locale, erased_at = EXCLUDED.erased_at, "
            "updated_at = EXCLUDED.updated_at"
        ),
        {
            "ids": [p.member_id for p in batch],
            "consents": [orjson.dumps(p.consents).decode() for p in batch],
            "modes": [p.quiet_mode for p in batch],
            "starts": [p.quiet_start for p in batch],
            "ends": [p.quiet_end for p in batch],
            "zones": [p.timezone for p in batch],
            "locales": [p.locale for p in batch],
            "erased": [p.erased_at for p in batch],
            "now": now,
        },
    )


async def insert_deliveries(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert deliveries; one per (event, message type, channel) whatever the redelivery.
    Answers the ids of those that are new."""
    if not rows:
        return set()
    encoded = [{**row, "context": orjson.dumps(row["context"]).decode()} for row in rows]
    result = await insert_many(
        conn,
        deliveries,
        encoded,
        on_conflict="ON CONFLICT (event_id, event_type, channel) DO NOTHING",
        returning="RETURNING delivery_id",
    )
    return {r[0] for r in result}


async def cap_history(
    conn: AsyncConnection, member_id: str, since: datetime
) -> tuple[list[datetime], set[str]]:
    """When the member's counted marketing events were counted since `since`, and their ids."""
    rows = (
        await conn.execute(
            text(
                "SELECT event_id, counted_at FROM cap_counts "
                "WHERE member_id = :m AND counted_at >= :since"
            ),
            {"m": member_id, "since": since},
        )
    ).all()
    return [r.counted_at for r in rows], {r.event_id for r in rows}
