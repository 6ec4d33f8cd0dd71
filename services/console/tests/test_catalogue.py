"""Every string the console shows has its zh-CN translation, and the catalogue loads."""

from __future__ import annotations

import re
from pathlib import Path

from loyalty_console import i18n
from loyalty_console.web import NAVIGATION

PACKAGE = Path(i18n.__file__).parent
_CALL = re.compile(
    r"""(?:\b_|\bN_|gettext)\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""", re.S
)


def message_ids() -> set[str]:
    found = {label for _, label, _ in NAVIGATION}
    sources = [*PACKAGE.rglob("*.html"), *PACKAGE.rglob("*.py")]
    for path in sources:
        for double, single in _CALL.findall(path.read_text(encoding="utf-8")):
            found.add(
                (double or single).encode().decode("unicode_escape")
                if "\\" in (double or single)
                else (double or single)
            )
    return found


def test_every_message_has_a_chinese_translation():
    catalogue = i18n.catalogue("zh-CN")
    missing = sorted(m for m in message_ids() if m not in catalogue)
    assert not missing, f"{len(missing)} messages lack a zh-CN translation: {missing[:20]}"


def test_placeholders_survive_translation():
    catalogue = i18n.catalogue("zh-CN")
    for msgid, msgstr in catalogue.items():
        wanted = set(re.findall(r"%\((\w+)\)s", msgid))
        assert set(re.findall(r"%\((\w+)\)s", msgstr)) == wanted, msgid


def test_english_is_the_message_itself_and_numbers_follow_the_locale():
    en, zh = i18n.Translator("en"), i18n.Translator("zh-CN")
    assert en.gettext("Members") == "Members"
    assert zh.gettext("Members") != "Members"
    assert en.money(123456) == "CN¥1,234.56"
    assert zh.money(123456) == "¥1,234.56"
    assert en.percent(33.333) == "33.3%"
