"""Export and check the committed JSON Schemas of every event payload.

    python -m loyalty_shared.events.schemas [--check] [--dir DIR]

Writes `<type>.json` per registered event type and an `index.json` to DIR (default:
`shared/schemas`). With `--check` it writes nothing and exits 1, listing the files that
differ from the models, are missing or are extra. A file for a type no longer registered is
reported but never deleted: removing a type is a breaking change someone must decide on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import REGISTRY, EventData, EventSpec

# shared/src/loyalty_shared/events/schemas.py -> shared/schemas
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "schemas"
INDEX = "index.json"
COMMAND = "python -m loyalty_shared.events.schemas"


def schema_of(spec: EventSpec) -> dict[str, Any]:
    """The JSON Schema of one event type's `data`, with its contract metadata."""
    model: type[EventData] = spec.model
    schema = model.model_json_schema()
    schema["$id"] = spec.dataschema
    schema["title"] = spec.type
    schema["x-topic"] = spec.topic
    schema["x-version"] = spec.version
    return schema


def file_name(spec: EventSpec) -> str:
    return f"{spec.type}.json"


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """File name -> exact file content for every schema file and the index."""
    files: dict[str, str] = {}
    index: dict[str, Any] = {}
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        files[file_name(spec)] = _dump(schema_of(spec))
        index[name] = {
            "dataschema": spec.dataschema,
            "file": file_name(spec),
            "topic": spec.topic,
            "version": spec.version,
        }
    files[INDEX] = _dump({"generated_by": COMMAND, "types": index})
    return files


def export(directory: Path = DEFAULT_DIR) -> list[str]:
    """Write every schema file; return the names of the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, content in render().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            changed.append(name)
    return changed


def check(directory: Path = DEFAULT_DIR) -> list[str]:
    """Compare the files in `directory` with the models; return one line per difference
    ("differs: x.json", "missing: x.json", "extra: x.json"), empty when they agree."""
    expected = render()
    present = {path.name for path in directory.glob("*.json")} if directory.is_dir() else set()
    problems = []
    for name in sorted(expected.keys() | present):
        if name not in present:
            problems.append(f"missing: {name}")
        elif name not in expected:
            problems.append(f"extra: {name}")
        elif (directory / name).read_text(encoding="utf-8") != expected[name]:
            problems.append(f"differs: {name}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="Export or check the JSON Schemas of the event payloads."
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the files differ"
    )
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"schema directory (default {DEFAULT_DIR})"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.dir)
        if problems:
            print(f"event schemas in {args.dir} do not match the models:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            print(f"run `{COMMAND}` to regenerate them", file=sys.stderr)
            return 1
        print(f"event schemas in {args.dir} match the models ({len(REGISTRY)} types)")
        return 0
    changed = export(args.dir)
    print(f"wrote {len(changed)} of {len(REGISTRY) + 1} files in {args.dir}")
    extras = [line for line in check(args.dir) if line.startswith("extra: ")]
    for line in extras:
        print(f"  {line} (no registered type; delete it if the removal is intended)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
