"""The notifier's wiring that handlers, jobs and routes share: settings, providers per channel,
the member directory and a short-lived cache of the operator's templates."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.member_directory import MemberDirectory
from ..adapters.providers import Provider
from ..adapters.tables import templates
from ..config import NotifierSettings
from ..domain.policy import DEFAULT_QUIET_HOURS, Preferences, QuietHours
from ..domain.templates import Template, TemplateKey


class TemplateCache:
    """The operator's templates, re-read at most every `ttl` seconds (and at once after a
    change made through this process)."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._loaded_at = float("-inf")
        self._templates: dict[TemplateKey, Template] = {}

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    async def get(self, conn: AsyncConnection) -> dict[TemplateKey, Template]:
        if time.monotonic() - self._loaded_at > self.ttl:
            rows = await conn.execute(select(templates))
            self._templates = {
                (r.event_type, r.channel, r.locale): Template(
                    r.event_type, r.channel, r.locale, r.subject, r.body
                )
                for r in rows
            }
            self._loaded_at = time.monotonic()
        return self._templates


@dataclass
class Notifier:
    settings: NotifierSettings
    providers: dict[str, list[Provider]]
    directory: MemberDirectory
    templates: TemplateCache = field(default_factory=TemplateCache)

    @property
    def default_quiet_hours(self) -> QuietHours:
        try:
            return self.settings.quiet_hours
        except ValueError:
            return DEFAULT_QUIET_HOURS

    def default_preferences(self, member_id: str) -> Preferences:
        return Preferences(member_id=member_id, quiet_hours=self.default_quiet_hours, known=False)
