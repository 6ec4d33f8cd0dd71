"""Languages: zh-CN (default) and en, from gettext catalogues read with Babel at start.

The English strings in the code and templates are the message ids; `locale/zh_CN/LC_MESSAGES/
messages.po` translates them. The .po file is read directly (no compile step), so a fresh
clone works as it is. Numbers, money and times are formatted by Babel for the chosen locale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal, format_percent

LOCALES = ("zh-CN", "en")
DEFAULT_LOCALE = "zh-CN"
COOKIE = "console_locale"
TIMEZONE = ZoneInfo("Asia/Shanghai")  # the platform's default zone (contract §4)
CATALOGUES = Path(__file__).parent / "locale"
NONE = "\u2013"  # an en dash: no figure


def N_(message: str) -> str:
    """Marks a message id that is translated later (where it is shown), for the extractor."""
    return message


@cache
def catalogue(locale: str) -> dict[str, str]:
    path = CATALOGUES / locale.replace("-", "_") / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return {}
    with path.open("rb") as handle:
        po = read_po(handle)
    return {str(m.id): str(m.string) for m in po if m.id and m.string and not m.fuzzy}


def choose(value: str | None) -> str:
    return value if value in LOCALES else DEFAULT_LOCALE


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


@dataclass(frozen=True)
class Translator:
    locale: str

    @property
    def babel_locale(self) -> Locale:
        return Locale.parse(self.locale.replace("-", "_"))

    def gettext(self, message: str, /, **values: Any) -> str:
        text = catalogue(self.locale).get(message, message) if self.locale != "en" else message
        return text % values if values else text

    def money(self, minor: Any, currency: str = "CNY") -> str:
        if minor is None or minor == "":
            return NONE
        return format_currency(
            Decimal(round(float(minor))) / 100, currency, locale=self.babel_locale
        )

    def number(self, value: Any, digits: int = 0) -> str:
        if value is None or value == "":
            return NONE
        if digits:
            return format_decimal(value, format=f"#,##0.{'0' * digits}", locale=self.babel_locale)
        return format_decimal(value, locale=self.babel_locale)

    def percent(self, value: Any) -> str:
        """A figure already multiplied by 100 (the services' rates), shown with one decimal."""
        if value is None:
            return NONE
        return format_percent(float(value) / 100, format="#,##0.0%", locale=self.babel_locale)

    def datetime(self, value: Any) -> str:
        parsed = _parse_time(value)
        if parsed is None:
            return NONE if not value else str(value)
        return format_datetime(
            parsed.astimezone(TIMEZONE), format="yyyy-MM-dd HH:mm", locale=self.babel_locale
        )

    def date(self, value: Any) -> str:
        if isinstance(value, str) and len(value) == 10:
            try:
                value = date.fromisoformat(value)
            except ValueError:
                return value
        if isinstance(value, date) and not isinstance(value, datetime):
            return format_date(value, format="yyyy-MM-dd", locale=self.babel_locale)
        parsed = _parse_time(value)
        if parsed is None:
            return NONE
        return format_date(parsed.astimezone(TIMEZONE).date(), "yyyy-MM-dd", self.babel_locale)
