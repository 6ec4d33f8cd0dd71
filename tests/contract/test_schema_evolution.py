"""Event schemas only grow: against every version committed before, no property disappears,
changes type or becomes required. A breaking change needs a new type version."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "shared" / "schemas"
_IGNORED = {"description", "title", "examples", "default"}


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def _history(path: Path) -> list[dict[str, Any]]:
    rel = str(path.relative_to(ROOT))
    try:
        commits = _git("log", "--format=%H", "--", rel).split()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return []
    versions = []
    for sha in commits:
        try:
            versions.append(json.loads(_git("show", f"{sha}:{rel}")))
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            continue
    return versions


def _shape(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _shape(v) for k, v in node.items() if k not in _IGNORED}
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return node


def breaking_changes(old: dict[str, Any], new: dict[str, Any], where: str = "") -> list[str]:
    """What `new` breaks for a consumer written against `old` (empty: only additions)."""
    problems = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, old_prop in old_props.items():
        if name not in new_props:
            problems.append(f"{where}{name}: removed")
        elif _shape(old_prop) != _shape(new_props[name]):
            problems.append(
                f"{where}{name}: changed from {_shape(old_prop)} to {_shape(new_props[name])}"
            )
    for name in set(new.get("required", [])) - set(old.get("required", [])):
        problems.append(f"{where}{name}: newly required")
    for def_name, old_def in old.get("$defs", {}).items():
        new_def = new.get("$defs", {}).get(def_name)
        if new_def is None:
            if any(f"#/$defs/{def_name}" in json.dumps(p) for p in new_props.values()):
                problems.append(f"$defs.{def_name}: removed")
            continue
        problems += breaking_changes(old_def, new_def, f"{where}$defs.{def_name}.")
    return problems


def test_the_checker_sees_a_breaking_change():
    old = {"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a"]}
    assert (
        breaking_changes(old, {**old, "properties": {**old["properties"], "c": {"type": "string"}}})
        == []
    )
    assert breaking_changes(
        old, {"properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a"]}
    )
    assert breaking_changes(old, {"properties": {"a": {"type": "integer"}}, "required": ["a"]})
    assert breaking_changes(old, {**old, "required": ["a", "b"]})


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.*.json")), ids=lambda p: p.stem)
def test_schema_is_additive_over_its_history(path: Path):
    current = json.loads(path.read_text())
    history = _history(path)
    if not history:
        pytest.skip("no committed history for this schema (a new type, or no git here)")
    problems = {msg for old in history for msg in breaking_changes(old, current)}
    assert not problems, f"{path.name} breaks consumers: {sorted(problems)}"
